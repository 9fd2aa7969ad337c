"""A blocking AFD poll signalled through an event object (no completion port).

The simplest use of ``IOCTL_AFD_POLL``: issue it with an ``Event`` and ``ApcContext = NULL``,
wait on the event. It shows the driver's behaviour in isolation (stage 1); the poller uses the
completion-port form instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from iocp import Handle, validate_timeout
from ntdll import functions as nt
from ntdll import status as ntstatus
from ntdll.structures import IO_STATUS_BLOCK

from .flags import IOCTL_AFD_POLL
from .structures import PollEntry, build_poll_info, read_poll_info

__all__ = ["CANCEL_WAIT_SECONDS", "poll_with_event"]

CANCEL_WAIT_SECONDS = 5.0
"""How long to wait for a cancelled poll to complete before giving up on it."""

# Buffers of polls that did not complete even after cancelling: the kernel may still write
# them, so they live as long as the process.
_orphaned: list[object] = []


def poll_with_event(device: int, entries: Iterable[tuple[int, int]],
                    timeout: float) -> list[PollEntry]:
    """Poll ``(base_handle, events)`` entries on ``device`` (a base socket handle or an AFD
    helper handle) and wait up to ``timeout`` seconds.

    Returns the entries that fired, or ``[]`` on timeout (the poll is then cancelled and its
    cancellation awaited, so no buffer is left to the kernel). Raises ``NtStatusError`` if the
    poll fails.
    """
    validate_timeout(timeout)
    info = build_poll_info(entries)
    io_status = IO_STATUS_BLOCK()
    io_status.Status = ntstatus.STATUS_PENDING
    with Handle(nt.CreateEventW(manual_reset=True, initial_state=False), "poll event") as event:
        status = nt.NtDeviceIoControlFile(device, event.value, None, io_status, IOCTL_AFD_POLL,
                                          info, info)
        if status == ntstatus.STATUS_PENDING:
            milliseconds = min(math.ceil(timeout * 1000), nt.INFINITE - 1)
            if nt.WaitForSingleObject(event.value, milliseconds) == nt.WAIT_TIMEOUT:
                nt.NtCancelIoFileEx(device, io_status)
                wait = math.ceil(CANCEL_WAIT_SECONDS * 1000)
                if nt.WaitForSingleObject(event.value, wait) == nt.WAIT_TIMEOUT:
                    _orphaned.append((info, io_status, event.detach()))
                    raise TimeoutError("a cancelled AFD poll did not complete in "
                                       f"{CANCEL_WAIT_SECONDS} s; its buffers are kept")
        final = io_status.Status & 0xFFFFFFFF
    if final == ntstatus.STATUS_CANCELLED:
        return []
    if not ntstatus.is_success(final):
        raise ntstatus.NtStatusError(final, "IOCTL_AFD_POLL")
    return read_poll_info(info)
