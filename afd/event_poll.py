"""A blocking AFD poll signalled through an event object (no completion port).

The simplest use of ``IOCTL_AFD_POLL``: issue it with an ``Event`` and ``ApcContext = NULL``,
wait on the event. It shows the driver's behaviour in isolation (stage 1); the poller uses the
completion-port form instead.

The kernel writes the poll's ``AFD_POLL_INFO`` and status block whenever the poll completes, so
they must outlive it. Everything that can fail is checked before the poll is issued (the
timeout included), and every way out while the poll may be pending — a timeout, or an
exception such as KeyboardInterrupt during the wait — cancels it and waits for its completion;
if it does not complete, its buffers and event are kept for the life of the process.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from iocp import validate_timeout
from ntdll import functions as nt
from ntdll import status as ntstatus
from ntdll.structures import IO_STATUS_BLOCK

from .flags import IOCTL_AFD_POLL
from .structures import PollEntry, build_poll_info, read_poll_info

__all__ = ["CANCEL_WAIT_SECONDS", "poll_with_event"]

CANCEL_WAIT_SECONDS = 5.0
"""How long to wait for a cancelled poll to complete before giving up on it."""

# Buffers (and event handles) of polls that did not complete even after cancelling: the
# kernel may still write them, so they live as long as the process.
_orphaned: list[object] = []


def _milliseconds(timeout: float | None) -> int:
    """``timeout`` seconds as a ``WaitForSingleObject`` wait; ``None``: ``INFINITE``."""
    validate_timeout(timeout)
    if timeout is None:
        return nt.INFINITE
    if math.isinf(timeout):
        raise OverflowError(f"timeout {timeout!r} s is too large: use None to wait forever")
    return min(math.ceil(timeout * 1000), nt.INFINITE - 1)


def poll_with_event(device: int, entries: Iterable[tuple[int, int]],
                    timeout: float | None) -> list[PollEntry]:
    """Poll ``(base_handle, events)`` entries on ``device`` (a base socket handle or an AFD
    helper handle) and wait up to ``timeout`` seconds (``None``: until one fires).

    Returns the entries that fired, or ``[]`` on timeout (the poll is then cancelled and its
    cancellation awaited, so no buffer is left to the kernel). Raises ``NtStatusError`` if the
    poll fails, ``ValueError`` / ``OverflowError`` for a bad timeout (before issuing anything).
    """
    milliseconds = _milliseconds(timeout)
    info = build_poll_info(entries)
    io_status = IO_STATUS_BLOCK()
    io_status.Status = ntstatus.STATUS_PENDING
    event = nt.CreateEventW(manual_reset=True, initial_state=False)
    settled = False  # the kernel is done with info / io_status (or never had them)
    try:
        try:
            status = nt.NtDeviceIoControlFile(device, event, None, io_status, IOCTL_AFD_POLL,
                                              info, info)
        except ntstatus.NtStatusError:
            settled = True  # the call's own failure: nothing reached the kernel
            raise
        if (status != ntstatus.STATUS_PENDING
                or nt.WaitForSingleObject(event, milliseconds) != nt.WAIT_TIMEOUT):
            settled = True  # completed: the event is set once the status block is final
    finally:
        # A timeout, or an exception (KeyboardInterrupt) while the poll may be pending.
        if not settled:
            settled = _cancel_and_wait(device, info, io_status, event)
        if settled:
            nt.CloseHandle(event)
    if not settled:
        raise TimeoutError("a cancelled AFD poll did not complete in "
                           f"{CANCEL_WAIT_SECONDS} s; its buffers are kept")
    final = io_status.Status & 0xFFFFFFFF
    if final == ntstatus.STATUS_CANCELLED:
        return []
    if not ntstatus.is_success(final):
        raise ntstatus.NtStatusError(final, "IOCTL_AFD_POLL")
    return read_poll_info(info)


def _cancel_and_wait(device: int, info: object, io_status: IO_STATUS_BLOCK,
                     event: int) -> bool:
    """Cancel the poll and wait for it to complete. Returns ``False`` if it did not: then its
    buffers and event are kept for good. They are kept *first*, so that an exception during
    the cancel or the wait cannot free them either."""
    record = (info, io_status, event)
    _orphaned.append(record)
    try:
        nt.NtCancelIoFileEx(device, io_status)
    except OSError:
        pass  # the device handle is gone: the kernel cancels its requests itself
    if nt.WaitForSingleObject(event, math.ceil(CANCEL_WAIT_SECONDS * 1000)) == nt.WAIT_TIMEOUT:
        return False
    _orphaned.remove(record)
    return True
