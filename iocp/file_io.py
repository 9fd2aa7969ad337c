"""Overlapped ``ReadFile``/``WriteFile`` on files and pipes, completing on a port."""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from ntdll import functions as nt
from ntdll import status as ntstatus
from ntdll.functions import Buffer
from ntdll.structures import OVERLAPPED

from .operation import Operation, OperationBusyError
from .port import PACKET, CompletionPort, IssueResult

__all__ = ["ReadOperation", "ViewWriteOperation", "WriteOperation", "read_operation", "start_read",
           "start_write"]

_END_OF_DATA = (ntstatus.STATUS_END_OF_FILE, ntstatus.STATUS_PIPE_BROKEN)


class ReadOperation(Operation):
    """An overlapped read: ``data`` holds the bytes read once it completes (a copy), or
    :meth:`view` shows them where they are (no copy)."""

    __slots__ = ("_viewed",)

    def __init__(self, tag: Any = None, buffer: Buffer | None = None) -> None:
        super().__init__(tag, buffer)
        self._viewed = False

    def view(self) -> memoryview:
        """The bytes read, without a copy: a ``memoryview`` of the operation's own buffer
        (empty at end of data); raises if the read failed otherwise.

        While that view, a slice of it, or a write from it (:meth:`OverlappedIO.write_from`)
        is alive, the operation refuses to be issued again (``OperationBusyError`` from
        :func:`read_operation`): the kernel would write into bytes that are still in use.
        """
        if self.at_end:
            return memoryview(b"")
        count = self.result()
        buffer = self._buffer
        assert buffer is not None
        self._viewed = True
        return memoryview(buffer).cast("B")[:count]

    @property
    def views_alive(self) -> bool:
        """Whether something made by :meth:`view` may still be alive: its buffer has a
        reference besides the operation's own (CPython's reference count; a view, a slice of
        one and a write from one each hold the buffer)."""
        # Two references when nothing else holds the buffer: the slot's and the argument's.
        return self._viewed and sys.getrefcount(self._buffer) > 2

    @property
    def data(self) -> bytes:
        """The bytes read (empty at end of data); raises if the read failed otherwise."""
        if self.at_end:
            return b""
        count = self.result()
        buffer = self.buffer
        assert buffer is not None
        return ctypes.string_at(ctypes.addressof(buffer), count)

    @property
    def at_end(self) -> bool:
        """The read completed with end of file, or the pipe's other end was closed."""
        return self.status in _END_OF_DATA


class WriteOperation(Operation):
    """An overlapped write of a private copy of the data; ``result()`` is the bytes written."""

    __slots__ = ()


class ViewWriteOperation(WriteOperation):
    """An overlapped write straight from a read's buffer (:meth:`OverlappedIO.write_from`):
    it holds that buffer until it completes — then lets go of it, so that the read may fill
    it again — and its buffer is never reused for another write's copy (it is the read's)."""

    __slots__ = ()

    def _complete(self, status: int, information: int) -> None:
        super()._complete(status, information)
        self._buffer = None  # the kernel is done with the bytes: the read's buffer is free


def read_operation(size: int, tag: Any, operation: ReadOperation | None) -> ReadOperation:
    """A read operation with room for ``size`` bytes: a new one, or ``operation`` (completed)
    given ``tag``. Raises ``OperationBusyError`` if ``operation`` is still pending and
    ``ValueError`` if its buffer is too small."""
    if operation is None:
        return ReadOperation(tag, ctypes.create_string_buffer(size))
    reused = operation.buffer  # raises OperationBusyError while still pending
    if reused is None or ctypes.sizeof(reused) < size:
        raise ValueError(f"{operation!r}: its buffer is smaller than {size} bytes")
    del reused  # a reference of our own would look like a live view
    if operation._viewed:
        if operation.views_alive:
            raise OperationBusyError(f"{operation!r}: a view of its bytes is still in use")
        operation._viewed = False
    operation.tag = tag
    return operation


def _set_offset(overlapped: OVERLAPPED, offset: int) -> None:
    overlapped.Offset = offset & 0xFFFFFFFF
    overlapped.OffsetHigh = offset >> 32


def start_read(port: CompletionPort, handle: int, size: int, tag: Any = None,
               offset: int = 0, operation: ReadOperation | None = None) -> ReadOperation:
    """Start reading up to ``size`` bytes from ``handle`` (associated with ``port``).

    ``offset`` is the file position (ignored by pipes). Pass a completed ``operation`` to reuse
    its buffer. A failure at issue time (a closed pipe: ``BrokenPipeError``; a bad handle...)
    raises ``OSError``; otherwise the completion arrives on ``port``.
    """
    if size <= 0 or size > 0xFFFFFFFF:
        raise ValueError(f"read size must be between 1 and 2**32-1 bytes, not {size}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")
    operation = read_operation(size, tag, operation)
    buffer = operation.buffer
    assert buffer is not None

    def issue(overlapped: OVERLAPPED) -> IssueResult:
        _set_offset(overlapped, offset)
        try:
            nt.ReadFile(handle, buffer, size, overlapped)
        except OSError as error:
            return error
        return PACKET

    port.start(operation, handle, issue)
    return operation


def start_write(port: CompletionPort, handle: int, data: bytes | bytearray | memoryview,
                tag: Any = None, offset: int = 0) -> WriteOperation:
    """Start writing ``data`` (copied: the caller may reuse its buffer at once) to ``handle``.

    A pipe may complete a write with fewer bytes than asked only if it was closed; the
    completed operation's ``information`` says how many were written.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")
    payload = bytes(data)
    if not payload or len(payload) > 0xFFFFFFFF:
        raise ValueError(f"write size must be between 1 and 2**32-1 bytes, not {len(payload)}")
    buffer = ctypes.create_string_buffer(payload, len(payload))
    operation = WriteOperation(tag, buffer)

    def issue(overlapped: OVERLAPPED) -> IssueResult:
        _set_offset(overlapped, offset)
        try:
            nt.WriteFile(handle, buffer, len(payload), overlapped)
        except OSError as error:
            return error
        return PACKET

    port.start(operation, handle, issue)
    return operation
