"""Operations: the memory the kernel writes into for one I/O request, plus a user tag.

An :class:`Operation` owns an ``OVERLAPPED`` whose first 16 bytes are the request's
``IO_STATUS_BLOCK``, and any buffer the request reads or writes. Its address is the request's
``ApcContext``, so the completion dequeued from the port names it. From the moment a request is
issued until its completion has been dequeued, the :class:`~iocp.port.CompletionPort` holds a
reference: the kernel may write into the memory at any time in between, so it must not be freed,
even if the caller dropped every reference of its own.
"""

from __future__ import annotations

import ctypes
import enum
from typing import Any

from ntdll import status as ntstatus
from ntdll.functions import Buffer
from ntdll.structures import OVERLAPPED

__all__ = ["Operation", "OperationBusyError", "OperationState"]


class OperationState(enum.Enum):
    IDLE = "idle"
    """Never issued (or its issue failed at once)."""
    PENDING = "pending"
    """Issued; the kernel owns the memory until the completion is dequeued."""
    COMPLETED = "completed"
    """The completion was dequeued; ``status`` and ``information`` are final."""


class OperationBusyError(RuntimeError):
    """An operation was issued again, or its buffer read, while the kernel still owns it."""


class Operation:
    """One overlapped I/O request: its kernel-written memory and the caller's ``tag``.

    An operation can be issued again once completed (its status is reset).
    """

    __slots__ = ("__weakref__", "_apc", "_buffer", "_handle", "_overlapped", "_state",
                 "information", "status", "tag")

    def __init__(self, tag: Any = None, buffer: Buffer | None = None) -> None:
        self.tag = tag
        self._overlapped = OVERLAPPED()
        self._apc = ctypes.addressof(self._overlapped)  # fixed for the operation's life
        self._buffer = buffer
        self._handle: int | None = None
        self._state = OperationState.IDLE
        self.status: int | None = None
        """The final NTSTATUS (unsigned), once completed."""
        self.information = 0
        """The final ``IO_STATUS_BLOCK.Information``: bytes transferred, for reads and writes."""

    @property
    def state(self) -> OperationState:
        return self._state

    @property
    def pending(self) -> bool:
        return self._state is OperationState.PENDING

    @property
    def apc_context(self) -> int:
        """The value passed as ``ApcContext`` (the ``OVERLAPPED``'s address): the port's key
        for the operation while it is pending."""
        return self._apc

    @property
    def handle(self) -> int | None:
        """The handle the request was issued on (``None`` if never issued)."""
        return self._handle

    @property
    def buffer(self) -> Buffer | None:
        """The request's buffer; refused while the kernel may still write into it."""
        if self._state is OperationState.PENDING:
            raise OperationBusyError(f"{self!r}: the buffer belongs to the kernel until completion")
        return self._buffer

    @property
    def succeeded(self) -> bool:
        return self.status is not None and ntstatus.is_success(self.status)

    @property
    def cancelled(self) -> bool:
        return self.status == ntstatus.STATUS_CANCELLED

    def result(self) -> int:
        """``information`` of a completed operation; raises ``NtStatusError`` if it failed."""
        if self._state is not OperationState.COMPLETED or self.status is None:
            raise OperationBusyError(f"{self!r} has not completed")
        if not ntstatus.is_success(self.status):
            raise ntstatus.NtStatusError(self.status, type(self).__name__)
        return self.information

    # -- for CompletionPort only ---------------------------------------------------------
    def _begin(self, handle: int) -> OVERLAPPED:
        if self._state is OperationState.PENDING:
            raise OperationBusyError(f"{self!r} is still pending: wait for its completion")
        self._handle = handle
        self._state = OperationState.PENDING
        self.status = None
        self.information = 0
        overlapped = self._overlapped
        # The status block reads STATUS_PENDING until the kernel completes the request, so
        # "still pending?" can be asked of the memory itself before cancelling.
        overlapped.Internal = ntstatus.STATUS_PENDING
        overlapped.InternalHigh = 0
        return overlapped

    def _abort(self) -> None:
        """The issue failed at once: no completion will come."""
        self._state = OperationState.IDLE

    def _complete(self, status: int, information: int) -> None:
        self.status = status
        self.information = information
        self._state = OperationState.COMPLETED

    def _kernel_still_pending(self) -> bool:
        return (self._state is OperationState.PENDING
                and self._overlapped.Internal == ntstatus.STATUS_PENDING)

    def __repr__(self) -> str:
        detail = ""
        if self.status is not None:
            detail = f" status={ntstatus.status_name(self.status) or hex(self.status)}"
        return f"<{type(self).__name__} {self._state.value}{detail} tag={self.tag!r}>"
