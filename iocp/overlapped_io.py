"""Overlapped reads and writes on one handle, with synchronous successes handled inline.

The rules
---------
A read or write on a handle associated with a port ends in one of three ways:

* **failed at once**: the call returned an error; nothing is queued and the request is over
  (:meth:`OverlappedIO.read` / :meth:`~OverlappedIO.write` raise the ``OSError``, except that
  a pipe whose writer closed reads as end of data, see :mod:`iocp.pipe_io`);
* **completed at once**: the call returned success. Without skip-on-success a completion
  packet is still queued and the operation stays ``PENDING`` until it is dequeued; *with* it
  (``FILE_SKIP_COMPLETION_PORT_ON_SUCCESS``) no packet comes, and the operation is returned
  ``COMPLETED``: its bytes are there now;
* **pending**: the operation is ``PENDING``; its completion arrives on the port (with the
  operation's ``tag``) and only that dequeue hands its memory back.

So after ``read``/``write`` a caller looks at ``operation.state``: ``COMPLETED`` means "done,
no packet is coming" (deliver the result now), ``PENDING`` means "wait for the port". A packet
that came for an operation already completed inline would show up in
:attr:`CompletionPort.stray_completions`: the port would notice (tests check that it stays 0).

Skip-on-success, and when it is safe
------------------------------------
``SetFileCompletionNotificationModes(h, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS |
FILE_SKIP_SET_EVENT_ON_HANDLE)`` saves one completion packet (and its dequeue: under Wine one
wineserver request per packet) for every request that completes at once — most of them on a
busy relay. It is set once per handle and *cannot be cleared*. It is only right when the
call's "success" return really means the I/O manager completed the request synchronously: true
for pipes and files, and for a socket whose provider is Microsoft's own, i.e. whose handle is
its own base handle (``SIO_BASE_HANDLE`` returns the same value). Behind a layered service
provider (LSP) the handle is the LSP's and its success returns need not match the base
driver's packets (libuv, .NET and Go check the same thing), so there the flag is left alone
and every request completes through the port. :func:`iocp.socket_io.skip_is_safe` makes that
check.

Memory
------
The operation owns its ``OVERLAPPED`` and buffer. A pending one is held by the port until its
completion is dequeued, whatever happens to the caller (see :mod:`iocp.port`); an inline one is
``COMPLETED`` before ``read``/``write`` returns, so its buffer is the caller's again at once.
A read operation may be passed back to ``read`` to reuse its buffer once it is completed
(``OperationBusyError`` while pending). Writes copy the data into the operation's own buffer,
except :meth:`OverlappedIO.write_from`, which sends a read's bytes from the read's own buffer
(:meth:`ReadOperation.view`): the write operation holds that buffer until it completes, and the
read refuses to be issued again while the write (or any view) is alive, so a relay moves each
chunk with no copy and no allocation in Python, double-buffered (one buffer being written out
while the next read fills another).
"""

from __future__ import annotations

import ctypes
from typing import Any

from ntdll import functions as nt
from ntdll.functions import Buffer

from .file_io import ReadOperation, ViewWriteOperation, WriteOperation, read_operation
from .operation import Operation, OperationState
from .port import CompletionPort, Transfer

__all__ = [
    "FILE_SKIP_COMPLETION_PORT_ON_SUCCESS",
    "FILE_SKIP_SET_EVENT_ON_HANDLE",
    "MAX_TRANSFER",
    "OverlappedIO",
    "Transfer",
    "set_skip_on_success",
]

FILE_SKIP_COMPLETION_PORT_ON_SUCCESS = 0x1
FILE_SKIP_SET_EVENT_ON_HANDLE = 0x2
MAX_TRANSFER = 0xFFFF_FFFF
"""The largest single read or write (a ``DWORD`` count)."""

def set_skip_on_success(handle: int) -> None:
    """Set skip-on-success (and skip-set-event) on ``handle``: for good, it cannot be cleared.

    Only for handles where a synchronous success return means no packet is owed (see the
    module's essay)."""
    nt.SetFileCompletionNotificationModes(
        handle, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS | FILE_SKIP_SET_EVENT_ON_HANDLE)


class OverlappedIO:
    """Reads and writes on one handle associated with ``port`` under ``key``.

    Subclasses name the calls (:mod:`iocp.socket_io`, :mod:`iocp.pipe_io`). The handle stays
    the caller's: :meth:`close` cancels what is pending and forgets the handle, it does not
    close it. Not thread-safe (one owner issues; any thread may dequeue).
    """

    _read_call: Transfer
    _write_call: Transfer
    _kind = "handle"

    def __init__(self, port: CompletionPort, handle: int, key: int, *,
                 skip_on_success: bool, associate: bool = True) -> None:
        if not handle:
            raise ValueError(f"{self._kind}: NULL handle")
        self.port = port
        self._handle: int | None = handle
        if associate:
            port.associate(handle, key)
        self._skip = False
        if skip_on_success:
            set_skip_on_success(handle)
            self._skip = True
        self._pending: set[Operation] = set()

    @property
    def handle(self) -> int:
        handle = self._handle
        if handle is None:
            raise ValueError(f"I/O on a closed {self._kind}")
        return handle

    @property
    def skip_on_success(self) -> bool:
        """Whether requests that complete at once queue no packet (they complete inline)."""
        return self._skip

    # -- requests ------------------------------------------------------------------------------
    def read(self, size: int, tag: Any = None,
             operation: ReadOperation | None = None) -> ReadOperation:
        """Start reading up to ``size`` bytes; returns the operation, ``COMPLETED`` (inline:
        ``data`` holds the bytes, ``b""`` at end of data) or ``PENDING`` (the completion comes
        through the port). ``operation``: a completed read to reuse (its buffer must hold
        ``size`` bytes). Raises ``OSError`` if the call failed at once."""
        if not 0 < size <= MAX_TRANSFER:
            raise ValueError(f"read size must be between 1 and {MAX_TRANSFER} bytes, not {size}")
        handle = self.handle
        operation = read_operation(size, tag, operation)
        buffer = operation.buffer
        assert buffer is not None
        self._start(operation, handle, self._read_call, buffer, size)
        return operation

    def write(self, data: bytes | bytearray | memoryview, tag: Any = None,
              operation: WriteOperation | None = None) -> WriteOperation:
        """Start writing ``data`` (copied into the operation's buffer); returns the operation,
        ``COMPLETED`` (inline: ``information`` is the count written) or ``PENDING``.
        ``operation``: a completed write whose buffer to reuse if it holds ``data`` (no fresh
        allocation per write). Raises ``OSError`` if the call failed at once
        (``BrokenPipeError``: the reader is gone)."""
        size = len(data)
        if not 0 < size <= MAX_TRANSFER:
            raise ValueError(f"write size must be between 1 and {MAX_TRANSFER} bytes, not {size}")
        handle = self.handle
        buffer = None
        if operation is not None and type(operation) is not ViewWriteOperation:
            buffer = operation.buffer  # raises OperationBusyError while still pending
            if buffer is not None and ctypes.sizeof(buffer) >= size:
                source = data if type(data) is bytes else bytes(data)
                ctypes.memmove(ctypes.addressof(buffer), source, size)
                operation.tag = tag
            else:
                buffer = None
        if buffer is None:
            buffer = ctypes.create_string_buffer(bytes(data), size)
            operation = WriteOperation(tag, buffer)
        assert operation is not None
        self._start(operation, handle, self._write_call, buffer, size)
        return operation

    def write_from(self, view: bytes | bytearray | memoryview, tag: Any = None) -> WriteOperation:
        """Start writing the bytes of ``view`` — made by :meth:`ReadOperation.view` (of any
        handle's read), or a slice of one that starts where it starts — *without copying
        them*: the operation holds the read's buffer until it completes, and the read refuses
        to be issued again meanwhile. Any other bytes-like object (a slice that starts further
        in, ``bytes``...) is copied as by :meth:`write`. Returns and raises as :meth:`write`.
        """
        if type(view) is not memoryview:
            return self.write(view, tag)
        size = view.nbytes
        base = view.obj
        if (not isinstance(base, ctypes.Array) or base._type_ is not ctypes.c_char
                or not 0 < size <= MAX_TRANSFER or view.readonly or not view.c_contiguous):
            return self.write(view, tag)
        # Only a view that starts at its buffer's start: the transfer is given the buffer
        # itself (its address is where the bytes are), so no ctypes object is made per write.
        if ctypes.addressof(ctypes.c_char.from_buffer(view)) != ctypes.addressof(base):
            return self.write(view, tag)
        handle = self.handle
        operation = ViewWriteOperation(tag, base)
        self._start(operation, handle, self._write_call, base, size)
        return operation

    def _start(self, operation: Operation, handle: int, call: Transfer, buffer: Buffer,
               size: int) -> None:
        # The port registers the operation before the call and completes it here when it
        # finished at once with skip-on-success (no packet coming): CompletionPort.start's
        # rules, without an ``issue`` closure per request.
        self.port._start_transfer(operation, handle, call, buffer, size, self._skip)
        if operation._state is OperationState.PENDING:
            pending = self._pending
            if len(pending) > 8:  # forget those dequeued by a caller that did not say so
                pending = self._pending = {op for op in pending if op.pending}
            pending.add(operation)

    def completed(self, operation: Operation) -> None:
        """Tell this object that ``operation``'s completion was dequeued (it forgets it)."""
        self._pending.discard(operation)

    @property
    def pending(self) -> int:
        """How many of this handle's requests have not had their completion dequeued."""
        self._pending = {op for op in self._pending if op.pending}
        return len(self._pending)

    def cancel(self, operation: Operation) -> bool:
        """Ask the kernel to cancel ``operation`` if it is still pending (its completion still
        comes, with ``STATUS_CANCELLED`` or its real result)."""
        if not operation.pending:
            return False
        try:
            return self.port.cancel(operation)
        except OSError:
            return False  # the handle is gone: the kernel cancels its requests itself

    def close(self) -> None:
        """Cancel every pending request and forget the handle (the caller closes it). The
        port keeps the cancelled requests' memory until their completions are dequeued."""
        if self._handle is None:
            return
        for operation in list(self._pending):
            self.cancel(operation)
        self._pending.clear()
        self._handle = None

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else f"0x{self._handle:x}"
        return (f"<{type(self).__name__} {state} skip_on_success={self._skip} "
                f"pending={len(self._pending)}>")
