"""afd: polling sockets through the AFD driver (``IOCTL_AFD_POLL``).

Structures and flags (:class:`AfdPollEvents`, :data:`IOCTL_AFD_POLL`), base-socket-handle
lookup (:func:`base_socket_handle`), helper handles that issue polls completing on a
completion port (:class:`AfdHelperHandle`), and a blocking event-signalled poll
(:func:`poll_with_event`).
"""

from .base_handle import NotASocketError, base_socket_handle
from .event_poll import poll_with_event
from .events import PollEvents, afd_events_for, poll_events_from
from .flags import IOCTL_AFD_POLL, AfdPollEvents
from .helper import AfdHelperHandle, AfdPollOperation, open_afd_device
from .poller import GROUP_SIZE, AfdPoller, PollerClosedError
from .selector import AfdSelector
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
    "GROUP_SIZE",
    "IOCTL_AFD_POLL",
    "NO_TIMEOUT",
    "AfdHelperHandle",
    "AfdPollEvents",
    "AfdPollOperation",
    "AfdPoller",
    "AfdSelector",
    "NotASocketError",
    "PollEntry",
    "PollEvents",
    "PollerClosedError",
    "afd_events_for",
    "base_socket_handle",
    "build_poll_info",
    "open_afd_device",
    "poll_events_from",
    "poll_info_type",
    "poll_with_event",
    "read_poll_info",
]
