"""The IOCP backend's streams: a socket or one of a child's pipes, on ``iocp``'s overlapped I/O.

Both kinds are one class over an :class:`iocp.OverlappedIO` (``SocketIO``: ``WSARecv`` /
``WSASend``; ``PipeIO``: ``ReadFile`` / ``WriteFile``). A request either completes at once —
with skip-on-success no packet is coming, so the result is delivered through ``call_soon`` (never
re-entrantly) and counted against the loop's inline budget — or completes later through the
port, where :meth:`OverlappedStream.completed` delivers it. A closed stream calls back no more;
the port keeps a cancelled request's memory until its completion is dequeued.

No copy per chunk: a read that filled a good part of its buffer is handed to the session as a
``memoryview`` of the read's own buffer (:meth:`iocp.ReadOperation.view`), which the session
queues and the other stream writes from where it is (:meth:`iocp.OverlappedIO.write_from`).
A buffer is read into again only once no view of it lives (``views_alive``: the chunk was
written out), so each stream keeps up to :data:`READ_BUFFERS` of them and allocates one only
when all are in use (ACTIVE_KB W10).

Why not AFD readiness polls plus non-blocking calls for the socket (the earlier design, DE1):
a poll is a request of its own and its completion a packet, before the ``recv`` that a
completed ``WSARecv`` already did; with skip-on-success most requests of a busy relay complete
at once, with no packet at all (ACTIVE_KB E15 has the measurements).
"""

from __future__ import annotations

import ctypes
import socket
import sys
from typing import TYPE_CHECKING

if sys.platform != "win32":  # pragma: no cover - backends.open_loop() refuses first
    raise ImportError("execsession.iocp_streams needs Windows (or Wine)")

from iocp import (
    Handle,
    Operation,
    OperationBusyError,
    OperationState,
    OverlappedIO,
    PipeIO,
    ReadOperation,
    SocketIO,
    WriteOperation,
)
from ntdll import NtStatusError

from .loop import ReadCallback, Stream, WriteCallback

if TYPE_CHECKING:
    from .iocp_backend import IocpLoop

__all__ = ["PIPE_KEY", "READ_MAX", "SOCKET_KEY", "OverlappedStream", "pipe_stream",
           "socket_stream"]

PIPE_KEY = 1
SOCKET_KEY = 3
READ_MAX = 1024 * 1024
"""The largest single read (sessions ask for what their buffers have room for)."""
READ_BUFFERS = 3
"""Read buffers a stream keeps: one being read into, one whose bytes are queued, one whose
bytes are being written out (a pending write)."""
SMALL_WRITE = 4096
"""Writes of ``bytes`` up to this size are copied into the stream's own small write operation,
reused (its ``OVERLAPPED`` and buffer) once its last write completed: a round trip's writes
allocate nothing. Larger ``bytes`` get a fresh buffer per write (reusing a chunk-sized one
measured no faster and would keep that much memory per idle session: ACTIVE_KB issue 10)."""
VIEW_FILL = 4
"""A read is handed out as a view of its buffer when it filled at least 1/VIEW_FILL of it."""
_EMPTY = ctypes.create_string_buffer(0)


class OverlappedStream(Stream):
    """One read and one write at a time on an :class:`iocp.OverlappedIO`."""

    def __init__(self, loop: IocpLoop, io: OverlappedIO, what: str,
                 sock: socket.socket | None = None) -> None:
        self._loop = loop
        self._io = io
        self._what = what
        self._sock = sock
        self._closed = False
        self._read_op: ReadOperation | None = None
        self._reads: list[ReadOperation] = []  # at most READ_BUFFERS: see read()
        self._read_cb: ReadCallback | None = None
        self._write_cb: WriteCallback | None = None
        self._write_op: WriteOperation | None = None
        self._small_write: WriteOperation | None = None  # see SMALL_WRITE; None while in use

    @property
    def skip_on_success(self) -> bool:
        return self._io.skip_on_success

    @property
    def io(self) -> OverlappedIO:
        """The handle's requests (for :meth:`IocpLoop.relay`, which hands a direction to C)."""
        return self._io

    @property
    def reading(self) -> bool:
        """Whether a read of this stream is in flight."""
        return self._read_op is not None and self._read_op.pending

    @property
    def writing(self) -> bool:
        """Whether a write of this stream is in flight."""
        return self._write_op is not None and self._write_op.pending

    # -- requests ------------------------------------------------------------------------------
    def read(self, size: int, callback: ReadCallback) -> None:
        if self._closed:
            raise ValueError(f"read on a closed {self._what}")
        size = min(size, READ_MAX)
        current = self._read_op
        if current is not None and current.pending:
            raise OperationBusyError(f"{self._what}: a read is still pending")
        operation = self._free_buffer(size)
        if operation is None:
            # All in use: keep the newest READ_BUFFERS - 1 whose bytes are still queued or
            # being written (each is free again once its bytes are out; one dropped here lives
            # on for as long as its views do) and this new one, sized up to a power of two and
            # never below the largest before, so that reads of varying sizes (the room left in
            # the session's buffer) fit the same buffers again and again.
            capacity = max([1 << max(12, (size - 1).bit_length()),
                            *[ctypes.sizeof(op.buffer or _EMPTY) for op in self._reads]])
            operation = ReadOperation(self, ctypes.create_string_buffer(capacity))
            self._reads = [*[op for op in self._reads if op.views_alive][1 - READ_BUFFERS:],
                           operation]
        try:
            operation = self._read_op = self._io.read(size, tag=self, operation=operation)
        except OSError as error:
            self.read_at_once = False
            self._loop.call_soon(self._deliver_read, callback, b"", error)
            return
        if operation.state is OperationState.COMPLETED:
            self._loop.inline_completed()
            data, failure = self._read_result(operation)
            self.read_at_once = True
            self._loop.call_soon(self._deliver_read, callback, data, failure)
        else:
            self.read_at_once = False
            self._read_cb = callback

    def _free_buffer(self, size: int) -> ReadOperation | None:
        """One of this stream's read operations that may be issued again with ``size`` bytes:
        no view of its bytes lives (chunks not yet written out hold their buffer)."""
        for operation in self._reads:
            if not operation.views_alive and ctypes.sizeof(operation.buffer or _EMPTY) >= size:
                return operation
        return None

    def write(self, data: bytes, callback: WriteCallback) -> None:
        self.write_chunk(data, callback)

    def write_chunk(self, data: bytes | memoryview, callback: WriteCallback) -> None:
        if self._closed:
            raise ValueError(f"write on a closed {self._what}")
        # A view of a read's buffer is written from where it is (no copy); small bytes are
        # copied into the stream's one small write operation (SMALL_WRITE), larger ones into
        # a fresh buffer per write.
        try:
            if type(data) is bytes and len(data) <= SMALL_WRITE:
                small = self._small_write
                if small is None:
                    small = WriteOperation(self, ctypes.create_string_buffer(SMALL_WRITE))
                # Taken while the kernel may own it; given back below or in completed().
                self._small_write = None
                operation = self._write_op = self._io.write(data, tag=self, operation=small)
            else:
                operation = self._write_op = self._io.write_from(data, tag=self)
        except OSError as error:  # BrokenPipeError: the child closed its stdin
            self._loop.call_soon(self._deliver_write, callback, 0, error)
            return
        if operation.state is OperationState.COMPLETED:
            self._write_op = None
            self._keep_small(operation)
            self._loop.inline_completed()
            self._loop.call_soon(self._deliver_write, callback, operation.information, None)
        else:
            self._write_cb = callback

    # -- results -------------------------------------------------------------------------------
    def _read_result(self, operation: ReadOperation
                     ) -> tuple[bytes | memoryview, BaseException | None]:
        if operation.at_end:
            return b"", None
        if operation.succeeded:
            # A read that filled a good part of its buffer is handed out as a view of it (no
            # copy; the buffer is not read into again while the view lives): the memory a
            # session holds stays within VIEW_FILL times its bytes. Smaller reads are copied,
            # and the buffer is free again at once.
            if operation.information * VIEW_FILL >= ctypes.sizeof(operation.buffer or _EMPTY):
                return operation.view(), None
            return operation.data, None
        return b"", self._failure(operation, "read")

    def _failure(self, operation: Operation, verb: str) -> BaseException:
        error = NtStatusError(operation.status or 0, f"{self._what} {verb}")
        if self._sock is not None:
            return ConnectionResetError(f"socket {verb} failed: {error}")
        return BrokenPipeError(f"pipe {verb} failed: {error}")

    def completed(self, operation: Operation) -> None:
        """The port dequeued one of this stream's requests."""
        self._io.completed(operation)
        if self._closed:
            return
        if isinstance(operation, ReadOperation):
            read_cb, self._read_cb = self._read_cb, None
            if read_cb is not None:
                data, error = self._read_result(operation)
                read_cb(data, error)
        elif isinstance(operation, WriteOperation):
            write_cb, self._write_cb = self._write_cb, None
            self._write_op = None
            self._keep_small(operation)
            if write_cb is not None:
                if operation.succeeded:
                    write_cb(operation.information, None)
                else:
                    write_cb(0, self._failure(operation, "write"))

    def _keep_small(self, operation: WriteOperation) -> None:
        """A completed write: keep it for the next small write if it is the small one."""
        if type(operation) is not WriteOperation:
            return
        buffer = operation.buffer  # completed: ours again
        if buffer is not None and ctypes.sizeof(buffer) == SMALL_WRITE:
            self._small_write = operation

    def _deliver_read(self, callback: ReadCallback, data: bytes | memoryview,
                      error: BaseException | None) -> None:
        if not self._closed:
            callback(data, error)

    def _deliver_write(self, callback: WriteCallback, count: int,
                       error: BaseException | None) -> None:
        if not self._closed:
            callback(count, error)

    # -- ending --------------------------------------------------------------------------------
    def shutdown_write(self) -> None:
        if self._sock is None:
            self.close()  # a pipe: closing our end is its end of data
            return
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._read_cb = self._write_cb = None
        self._io.close()  # cancels what is pending; a pipe's handle is closed with it


def socket_stream(loop: IocpLoop, sock: socket.socket) -> OverlappedStream:
    """A stream on a connected socket, associated with the loop's port for the rest of its
    life; skip-on-success where the socket is its own base handle."""
    return OverlappedStream(loop, SocketIO(loop.port, sock, SOCKET_KEY), "socket", sock)


def pipe_stream(loop: IocpLoop, handle: Handle) -> OverlappedStream:
    """A stream on our overlapped end of a child's pipe (owned: closed with the stream)."""
    try:
        io = PipeIO(loop.port, handle, PIPE_KEY)
    except BaseException:
        handle.close()
        raise
    return OverlappedStream(loop, io, "pipe")
