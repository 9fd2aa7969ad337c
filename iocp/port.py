"""The I/O completion port wrapper."""

from __future__ import annotations

import ctypes
import math
import threading
import time
import warnings
from collections.abc import Callable
from itertools import repeat
from types import TracebackType
from typing import NamedTuple

from ntdll import functions as nt
from ntdll import status as ntstatus
from ntdll.functions import Buffer
from ntdll.speedups import native as _native
from ntdll.structures import FILE_IO_COMPLETION_INFORMATION, OVERLAPPED

from .operation import Operation

__all__ = ["WAKEUP_KEY", "Completion", "CompletionPort", "PortClosedError", "validate_timeout"]

DEFAULT_BATCH = 128
"""Entries dequeued per call by default."""

WAKEUP_KEY = 0xFFFF_FFFF_FFFF_FFFF
"""The completion key :meth:`CompletionPort.wakeup` posts with; associate no handle with it."""

CLOSE_DRAIN_SECONDS = 2.0
"""How long :meth:`CompletionPort.close` waits for cancelled requests to complete."""

# Operations still pending when their port closed (the kernel did not complete them in time).
# Their memory may yet be written by the kernel, so it is never freed.
_orphaned: list[Operation] = []


def validate_timeout(timeout: float | None) -> None:
    """Refuse a timeout that is not ``None`` or a number of seconds ``>= 0`` (NaN included)."""
    if timeout is not None and (math.isnan(timeout) or timeout < 0):
        raise ValueError(f"timeout must be None or >= 0 seconds, not {timeout!r}")


class PortClosedError(ValueError):
    """The completion port was used after ``close()``."""


class Completion(NamedTuple):
    """One dequeued completion packet (immutable).

    ``operation`` is the :class:`Operation` whose request completed (now ``COMPLETED``), or
    ``None`` for a packet posted without one. ``apc_context`` is the raw ``ApcContext`` the
    kernel returned, kept for diagnostics (it equals ``operation.apc_context``).

    A named tuple rather than a frozen dataclass: one is built per completion in the dequeue
    loop, and a tuple is built about three times faster (it is most of the loop's cost once the
    entries are decoded in C).
    """

    key: int
    status: int
    information: int
    operation: Operation | None
    apc_context: int

    @property
    def tag(self) -> object:
        return self.operation.tag if self.operation is not None else None


_new_completion: Callable[
    [type[Completion], tuple[int, int, int, Operation | None, int]], Completion
] = tuple.__new__
"""``tuple.__new__``: builds a :class:`Completion` from its fields without a Python call."""


class CompletionPort:
    """An NT I/O completion port (``NtCreateIoCompletion``).

    Handles are associated with a key; requests issued through :meth:`start` (or the
    ``iocp.file_io`` / ``afd`` helpers built on it) complete here, and :meth:`dequeue` returns them
    in batches. The port keeps every pending :class:`Operation` alive until its completion has
    been dequeued. Thread-safe: any thread may issue, post or cancel while another dequeues.
    """

    def __init__(self, concurrency: int = 0) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, Operation] = {}
        self._local = threading.local()
        self._handle: int | None = nt.NtCreateIoCompletion(concurrency)

    # -- state ----------------------------------------------------------------------------
    @property
    def handle(self) -> int:
        """The port's raw handle; raises :class:`PortClosedError` once closed."""
        handle = self._handle
        if handle is None:
            raise PortClosedError("operation on a closed completion port")
        return handle

    @property
    def closed(self) -> bool:
        return self._handle is None

    @property
    def pending_count(self) -> int:
        """How many issued operations have not had their completion dequeued yet."""
        return len(self._pending)

    # -- association and posting ----------------------------------------------------------
    def associate(self, handle: int, key: int) -> None:
        """Deliver completions of I/O on ``handle`` (a file, pipe, device or base socket
        handle, opened for overlapped I/O) to this port, tagged with ``key``.

        A handle can be associated with one port only, once; closing it ends the association.
        """
        nt.CreateIoCompletionPort(handle, self.handle, key, 0)

    def post(self, key: int = 0, status: int = ntstatus.STATUS_SUCCESS, information: int = 0,
             operation: Operation | None = None) -> None:
        """Queue a packet (``NtSetIoCompletion``) that :meth:`dequeue` returns as given.

        With ``operation``, the packet completes it: it is held by the port until dequeued.
        """
        if operation is None:
            nt.NtSetIoCompletion(self.handle, key, 0, status, information)
            return

        def issue(overlapped: OVERLAPPED) -> bool:
            nt.NtSetIoCompletion(self.handle, key, ctypes.addressof(overlapped), status,
                                 information)
            return True

        self.start(operation, 0, issue)

    def wakeup(self) -> None:
        """Wake a thread blocked in :meth:`dequeue`: posts a packet with :data:`WAKEUP_KEY`.

        Safe from any thread.
        """
        nt.NtSetIoCompletion(self.handle, WAKEUP_KEY, 0, ntstatus.STATUS_SUCCESS, 0)

    # -- issuing --------------------------------------------------------------------------
    def start(self, operation: Operation, handle: int,
              issue: Callable[[OVERLAPPED], bool]) -> Operation:
        """Issue one request for ``operation`` on ``handle``.

        ``issue`` receives the operation's ``OVERLAPPED`` (status preset to ``STATUS_PENDING``;
        its address is the ``ApcContext``) and makes the call; it returns whether a completion
        packet will be queued, or raises if the call failed at once (then none will be).
        The operation is registered *before* the call, as its completion may be dequeued by
        another thread before ``issue`` even returns.
        """
        with self._lock:
            self.handle  # noqa: B018 - raises PortClosedError once closed
            overlapped = operation._begin(handle)
            self._pending[operation.apc_context] = operation
        try:
            expected = issue(overlapped)
        except BaseException:
            self._forget(operation)
            raise
        if not expected:
            self._forget(operation)
        return operation

    def _forget(self, operation: Operation) -> None:
        with self._lock:
            self._pending.pop(operation.apc_context, None)
        operation._abort()

    def device_io_control(self, handle: int, io_control_code: int, buffer: Buffer,
                          operation: Operation) -> Operation:
        """Issue ``NtDeviceIoControlFile`` with ``buffer`` as both input and output.

        ``handle`` must be associated with this port; ``buffer`` should be the operation's own.
        """
        def issue(overlapped: OVERLAPPED) -> bool:
            nt.NtDeviceIoControlFile(handle, None, ctypes.addressof(overlapped), overlapped,
                                     io_control_code, buffer, buffer)
            return True

        return self.start(operation, handle, issue)

    def cancel(self, operation: Operation) -> bool:
        """Ask the kernel to cancel a pending request (``NtCancelIoFileEx``).

        Returns ``True`` if a cancellation was requested, ``False`` if the request is not
        pending any more (completed, or its completion is already queued). Either way the
        operation stays pending until its completion is dequeued, with ``STATUS_CANCELLED``
        or, if it won the race, its real result.
        """
        if not operation.pending or not operation.handle:
            return False  # completed, never issued, or a posted packet: nothing to cancel
        if _native is not None:  # the C side reads the status block itself
            return _native.cancel(operation.handle, operation._overlapped)
        if not operation._kernel_still_pending():
            return False
        return nt.NtCancelIoFileEx(operation.handle, operation._overlapped)

    # -- dequeuing ------------------------------------------------------------------------
    def _entries(self, count: int) -> ctypes.Array[FILE_IO_COMPLETION_INFORMATION]:
        entries: ctypes.Array[FILE_IO_COMPLETION_INFORMATION] | None = getattr(
            self._local, "entries", None)
        if entries is None or len(entries) < count:
            entries = (FILE_IO_COMPLETION_INFORMATION * count)()
            self._local.entries = entries
        return entries

    def dequeue(self, timeout: float | None = None,
                max_entries: int = DEFAULT_BATCH) -> list[Completion]:
        """Wait for completions and return up to ``max_entries`` of them.

        ``timeout`` in seconds (0 polls; ``None`` waits forever). A timeout returns ``[]``.
        Each returned operation is ``COMPLETED`` and released by the port.
        """
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        validate_timeout(timeout)
        if timeout is not None:
            # Relative timeouts are negative, in 100-ns units; round up so a short wait
            # never becomes a poll.
            relative = -math.ceil(timeout * 10_000_000) if timeout else 0
        else:
            relative = None
        if _native is not None:
            return self._dequeue_native(relative, max_entries)
        entries = self._entries(max_entries)
        view = entries if len(entries) == max_entries else (
            FILE_IO_COMPLETION_INFORMATION * max_entries).from_buffer(entries)
        count = nt.NtRemoveIoCompletionEx(self.handle, view, relative)
        return self._complete_entries(view, count)

    def _complete_entries(self, view: ctypes.Array[FILE_IO_COMPLETION_INFORMATION],
                          count: int) -> list[Completion]:
        """Pure ctypes: decode the first ``count`` entries the kernel wrote into ``view`` and
        hand each completion to its operation."""
        completions: list[Completion] = []
        if not count:
            return completions
        pop = self._pending.pop
        with self._lock:
            for index in range(count):
                entry = view[index]
                apc_context = entry.ApcContext or 0
                status = entry.IoStatusBlock.Status & 0xFFFFFFFF
                information = entry.IoStatusBlock.Information
                operation = pop(apc_context, None) if apc_context else None
                if operation is not None:
                    operation._complete(status, information)
                completions.append(Completion(entry.KeyContext or 0, status, information,
                                              operation, apc_context))
        return completions

    def _dequeue_native(self, relative: int | None, max_entries: int) -> list[Completion]:
        """:meth:`dequeue` with the C speedups: the batch is dequeued and decoded in C."""
        assert _native is not None
        return self._complete_decoded(
            _native.remove_completions(self.handle, max_entries, relative))

    def _complete_decoded(self, flat: list[int]) -> list[Completion]:
        """With the speedups: hand each completion decoded in C (``key, apc_context, status,
        information`` per completion, flat) to its operation.

        Column by column, with C-level iteration (slices, ``map``): per completion this is
        about a third of a Python loop's cost.
        """
        if not flat:
            return []
        keys, apc_contexts = flat[0::4], flat[1::4]
        statuses, informations = flat[2::4], flat[3::4]
        with self._lock:
            # An ApcContext of 0 (a packet posted without an operation) is never a key.
            operations = list(map(self._pending.pop, apc_contexts, repeat(None)))
            for operation, status, information in zip(operations, statuses, informations,
                                                      strict=True):
                if operation is not None:
                    operation._complete(status, information)
        return list(map(_new_completion, repeat(Completion),
                        zip(keys, statuses, informations, operations, apc_contexts,
                            strict=True)))

    # -- closing --------------------------------------------------------------------------
    def close(self) -> None:
        """Cancel what is pending, wait (briefly) for it, and close the port.

        Completions dequeued while closing are discarded. An operation whose completion does
        not arrive within ``CLOSE_DRAIN_SECONDS`` is kept alive for the life of the process
        (the kernel may still write into it) and a ``ResourceWarning`` says so.
        """
        if self._handle is None:
            return
        with self._lock:
            pending = list(self._pending.values())
        for operation in pending:
            try:
                self.cancel(operation)
            except OSError:
                pass  # its handle was closed: the request is being cancelled already
        deadline = time.monotonic() + CLOSE_DRAIN_SECONDS
        while self._pending and time.monotonic() < deadline:
            self.dequeue(timeout=0.05)
        with self._lock:
            handle, self._handle = self._handle, None
            leftover = list(self._pending.values())
            self._pending.clear()
        if leftover:
            _orphaned.extend(leftover)
            warnings.warn(f"{len(leftover)} operation(s) still pending when the completion port "
                          "closed; their memory is kept for the life of the process",
                          ResourceWarning, stacklevel=2)
        if handle is not None:
            nt.NtClose(handle)

    def __enter__(self) -> CompletionPort:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else f"handle=0x{self._handle:x}"
        return f"<CompletionPort {state} pending={len(self._pending)}>"

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
            try:
                self.close()
            except OSError:
                pass
