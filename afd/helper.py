"""AFD helper handles: a handle to ``\\Device\\Afd`` on which polls for *other* sockets are issued.

Polls must be issued on a handle associated with the completion port. Associating every socket
would tie each to the port for life (and a socket can be associated only once), so — as wepoll,
mio and trio do — polls are issued on a private handle to the AFD device, opened with
``NtCreateFile``, associated with the port once; the poll's ``AFD_POLL_INFO`` names the sockets'
base handles. The completion arrives on the helper's port with the poll's ``ApcContext``.
"""

from __future__ import annotations

import ctypes
import itertools
import os
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from iocp import PACKET, CompletionPort, Handle, IssueResult, Operation, OperationBusyError
from ntdll import functions as nt
from ntdll.speedups import native as _native
from ntdll.structures import OVERLAPPED

from .flags import IOCTL_AFD_POLL
from .structures import AFD_POLL_INFO, NO_TIMEOUT, PollEntry, build_poll_info, read_poll_info

__all__ = ["AfdHelperHandle", "AfdPollOperation", "open_afd_device"]

SYNCHRONIZE = 0x00100000
FILE_SHARE_READ = 0x00000001
FILE_SHARE_WRITE = 0x00000002
FILE_OPEN = 0x00000001
FILE_SKIP_SET_EVENT_ON_HANDLE = 0x2

_serial = itertools.count()


def open_afd_device(name: str | None = None) -> Handle:
    """Open ``\\Device\\Afd\\<name>`` (the name after ``Afd\\`` is free-form: only the device
    matters) with ``SYNCHRONIZE`` access, for asynchronous I/O."""
    path = "\\Device\\Afd\\" + (name or f"ntafd-{os.getpid()}-{next(_serial)}")
    value = nt.NtCreateFile(path, SYNCHRONIZE, FILE_SHARE_READ | FILE_SHARE_WRITE, FILE_OPEN)
    return Handle(value, f"AFD helper {path}")


class AfdPollOperation(Operation):
    """One ``IOCTL_AFD_POLL`` request; ``results`` are the entries the kernel reported."""

    __slots__ = ()

    @property
    def results(self) -> list[PollEntry]:
        """The sockets that fired, with their events (empty if cancelled or timed out)."""
        if not self.succeeded:  # pending, cancelled or failed: nothing was reported
            return []
        buffer = self.buffer
        assert isinstance(buffer, ctypes.Structure)
        return read_poll_info(buffer)

    def reported_events(self) -> int:
        """The OR of the ``AfdPollEvents`` bits of :attr:`results`, as an ``int`` (0 if
        cancelled or failed): the poller's hot path, read in C with the speedups."""
        if not self.succeeded:
            return 0
        buffer = self.buffer
        assert isinstance(buffer, ctypes.Structure)
        if _native is not None:
            return _native.afd_poll_events(buffer)
        events = 0
        for entry in read_poll_info(buffer):
            events |= int(entry.events)
        return events


class AfdHelperHandle:
    """An AFD device handle associated with ``port`` under ``key``, for issuing polls."""

    def __init__(self, port: CompletionPort, key: int = 0, name: str | None = None) -> None:
        self.port = port
        self.key = key
        self._handle = open_afd_device(name)
        try:
            port.associate(self._handle.value, key)
            # The handle is never waited on, so the kernel need not signal it on completion.
            nt.SetFileCompletionNotificationModes(self._handle.value,
                                                  FILE_SKIP_SET_EVENT_ON_HANDLE)
        except BaseException:
            self._handle.close()
            raise

    @property
    def handle(self) -> int:
        return self._handle.value

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def poll(self, entries: Iterable[tuple[int, int]], tag: Any = None,
             timeout: int = NO_TIMEOUT, exclusive: bool = False) -> AfdPollOperation:
        """Issue one poll for ``(base_handle, events)`` entries; the completion arrives on
        the port when any of them fires (or on cancel / timeout / a socket closing)."""
        items = list(entries)
        if len(items) == 1:  # the poller's case (filled and issued in C with the speedups)
            operation = self.new_poll(tag)
            base, events = items[0]
            self.issue_one(operation, base, events, timeout, exclusive)
            return operation
        info = build_poll_info(items, timeout, exclusive)
        operation = AfdPollOperation(tag, info)
        self.port.device_io_control(self.handle, IOCTL_AFD_POLL, info, operation)
        return operation

    @staticmethod
    def new_poll(tag: Any = None) -> AfdPollOperation:
        """An idle one-socket poll operation for :meth:`issue_one` (its own ``AFD_POLL_INFO``).

        Made apart from issuing so that the caller holds it *before* the call: if an exception
        interrupts :meth:`issue_one` after the kernel took the request, the caller still knows
        which operation will complete (the port keeps it pending meanwhile)."""
        return AfdPollOperation(tag, AFD_POLL_INFO())

    def issue_one(self, operation: AfdPollOperation, base: int, events: int,
                  timeout: int = NO_TIMEOUT, exclusive: bool = False) -> None:
        """Fill ``operation``'s ``AFD_POLL_INFO`` (from :meth:`new_poll`) for one socket and
        issue it. A failure of the call itself (``NtStatusError``: the handle is no socket, or
        was closed) leaves ``operation`` idle; any other exception leaves it pending on the
        port (see ``iocp.port``)."""
        if not base:
            raise ValueError("an AFD poll entry needs a non-NULL base socket handle")
        events = int(events)
        timeout = int(timeout)
        exclusive = bool(exclusive)
        info = operation._buffer
        if not isinstance(info, AFD_POLL_INFO):
            raise TypeError("issue_one needs an operation made by new_poll()")
        helper = self.handle
        native = _native
        if native is not None:
            def issue(overlapped: OVERLAPPED) -> IssueResult:
                try:
                    native.afd_poll(helper, overlapped, info, base, events, timeout, exclusive)
                except OSError as error:
                    return error
                return PACKET

            self.port.start(operation, helper, issue)
            return
        if operation.pending:  # checked before the buffer is rewritten under the kernel
            raise OperationBusyError(f"{operation!r} is still pending")
        info.Timeout = timeout
        info.NumberOfHandles = 1
        info.Exclusive = int(exclusive)
        slot = info.Handles[0]
        slot.Handle = base
        slot.Events = events
        slot.Status = 0
        self.port.device_io_control(helper, IOCTL_AFD_POLL, info, operation)

    def cancel(self, operation: AfdPollOperation) -> bool:
        """Cancel a pending poll (it completes with ``STATUS_CANCELLED``); see
        :meth:`CompletionPort.cancel`."""
        return self.port.cancel(operation)

    def close(self) -> None:
        """Close the handle. Cancel its pending polls first (``CompletionPort.close`` does):
        on Windows closing the handle does not end polls issued for other sockets (ACTIVE_KB
        WD1), although Wine ends them."""
        self._handle.close()

    def __enter__(self) -> AfdHelperHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
