"""afd: polling sockets through the AFD driver (``IOCTL_AFD_POLL``).

Structures and flags (:class:`AfdPollEvents`, :data:`IOCTL_AFD_POLL`), base-socket-handle
lookup (:func:`base_socket_handle`), helper handles that issue polls completing on a
completion port (:class:`AfdHelperHandle`), poll groups of helpers (:class:`PollGroups`), one
socket's poll state machine (:class:`AfdSocket`), a blocking event-signalled poll
(:func:`poll_with_event`), and on them :class:`AfdPoller` and :class:`AfdSelector`.
"""

from .base_handle import NotASocketError, base_socket_handle
from .event_poll import poll_with_event
from .events import PollEvents, afd_events_for, poll_events_from
from .flags import IOCTL_AFD_POLL, AfdPollEvents
from .helper import AfdHelperHandle, AfdPollOperation, open_afd_device
from .poll_group import GROUP_SIZE, PollGroup, PollGroups
from .poller import CLOSE_WATCH, AfdPoller, PollerClosedError
from .selector import AfdSelector
from .socket_state import AfdSocket, SocketState
from .structures import (
    AFD_POLL_HANDLE_INFO,
    AFD_POLL_INFO,
    NO_TIMEOUT,
    PollEntry,
    build_poll_info,
    poll_info_type,
    read_poll_info,
)

__all__ = [
    "AFD_POLL_HANDLE_INFO",
    "AFD_POLL_INFO",
    "CLOSE_WATCH",
    "GROUP_SIZE",
    "IOCTL_AFD_POLL",
    "NO_TIMEOUT",
    "AfdHelperHandle",
    "AfdPollEvents",
    "AfdPollOperation",
    "AfdPoller",
    "AfdSelector",
    "AfdSocket",
    "NotASocketError",
    "PollEntry",
    "PollEvents",
    "PollGroup",
    "PollGroups",
    "PollerClosedError",
    "SocketState",
    "afd_events_for",
    "base_socket_handle",
    "build_poll_info",
    "open_afd_device",
    "poll_events_from",
    "poll_info_type",
    "poll_with_event",
    "read_poll_info",
]
