"""asyncio pipe transports on overlapped ``ReadFile`` / ``WriteFile`` completing on the loop's port.

Rules (the kernel's and asyncio's):

- A transport has at most one read and one write in flight. The buffer of each belongs to the
  kernel until its completion is dequeued; ``iocp`` keeps the :class:`~iocp.Operation` alive
  until then, whatever happens to the transport (closed, aborted, garbage).
- Closing cancels what is in flight (``NtCancelIoFileEx``) and closes the handle at once; the
  cancelled completions arrive later and are ignored. Closing the handle is safe before they
  arrive: the memory is the operation's, not the handle's.
- Reads end with ``STATUS_PIPE_BROKEN`` / ``STATUS_END_OF_FILE`` when the writer closed (F12):
  that is end of data, ``eof_received`` then ``connection_lost(None)``.
- A read that completes while reading is paused is held and delivered on ``resume_reading``;
  no ``data_received`` is ever called while paused.
- Writes are copied; while one is in flight further data is buffered and written in one
  ``WriteFile`` when it completes (a pipe write completes when every byte is in: F13). The
  protocol is paused above the high-water mark of bytes not yet written.
- **The loop's own pipes** (:class:`ChildPipe`: a child's stdio, made by the loop with
  ``iocp.child_stdio_pipe``) get skip-on-success (:class:`iocp.PipeIO`): a read that finds
  data, or a write the pipe's buffer takes, completes inline with no packet and no dequeue,
  and a read that finds the writer gone is end of data at once (F12), inline too. As the
  socket transports' receives (``afd.aio_sockets``, ACTIVE_KB AS2), their next read is queued
  with the loop and issued when it is idle; the inline budget is one read per transport per
  loop turn, so a pipe that is always full starves nothing. A pipe a user passes to
  ``connect_read_pipe`` / ``connect_write_pipe`` never gets skip-on-success (it can never be
  cleared, and the handle may be shared or a layered one): its reads and writes all complete
  through the port, the next read issued through ``call_soon``.

The handle must have been opened for overlapped I/O (as the Proactor loop requires); it is
associated with the port for good, so one handle serves one loop.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable
from typing import Any

from iocp import (
    Handle,
    Operation,
    OverlappedIO,
    PipeIO,
    ReadOperation,
    WriteOperation,
)
from ntdll import NtStatusError

from .aio_port import IO_KEY, LoopPort
from .aio_transport import CompletionTransport, WriteFlowControl

__all__ = ["READ_SIZE", "ChildPipe", "ReadPipeTransport", "WritePipeTransport", "pipe_handle"]

READ_SIZE = 64 * 1024
"""Bytes asked per read (64 KiB moved most per second under Wine: WINDOWS_ON_LINUX.md)."""


class ChildPipe(Handle):
    """Our end of a child's standard-handle pipe, made by the loop itself
    (``iocp.child_stdio_pipe``). Nobody else has this handle and it is the named-pipe file
    system's own, so its transport may set skip-on-success on it (which can never be
    cleared); a pipe a user passes to ``connect_*_pipe`` never gets it."""

    __slots__ = ()


def pipe_handle(pipe: Any) -> int:
    """The Windows handle of ``pipe``: an ``int`` handle, an :class:`iocp.Handle`, an object
    with a ``handle`` attribute (``asyncio.windows_utils.PipeHandle``), a file object (its C
    runtime fd is mapped to its handle), or an object whose ``fileno()`` is a handle."""
    if isinstance(pipe, bool):
        raise TypeError(f"not a pipe: {pipe!r}")
    if isinstance(pipe, int):
        return pipe
    if isinstance(pipe, Handle):
        return pipe.value
    handle = getattr(pipe, "handle", None)
    if isinstance(handle, int):
        return handle
    if isinstance(pipe, io.IOBase):
        if sys.platform == "win32":
            import msvcrt
            return msvcrt.get_osfhandle(pipe.fileno())
        raise TypeError("file objects name handles only on Windows")
    fileno = getattr(pipe, "fileno", None)
    if fileno is None:
        raise TypeError(f"not a pipe (no handle, no fileno()): {pipe!r}")
    return int(fileno())


class _PipeTransport(CompletionTransport):
    """What both directions share: the handle's :class:`iocp.PipeIO`, cancelling, closing."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: LoopPort, pipe: Any,
                 protocol: asyncio.BaseProtocol, extra: dict[str, Any] | None,
                 skip_on_success: bool) -> None:
        super().__init__(loop, protocol, {**(extra or {}), "pipe": pipe})
        self._port = port
        self._pipe = pipe
        self._handle = pipe_handle(pipe)
        self._io: OverlappedIO = PipeIO(port, self._handle, IO_KEY,
                                        skip_on_success=skip_on_success, owns=False)
        self._io_seen: Callable[[], None] = loop._io_seen  # type: ignore[attr-defined]

    def _cancel(self, operation: Operation | None) -> None:
        if operation is not None:
            self._io.cancel(operation)

    def _release(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is None:
            return
        self._io.close()
        close = getattr(pipe, "close", None)
        if close is not None:
            close()
        elif isinstance(pipe, int):
            from ntdll import functions as nt
            nt.CloseHandle(pipe)

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        return (f"<{type(self).__name__} handle={self._handle:#x} {state} "
                f"skip_on_success={self._io.skip_on_success}>")

    def __del__(self) -> None:
        if getattr(self, "_pipe", None) is not None and not getattr(self, "_closing", True):
            import warnings
            warnings.warn(f"unclosed transport {self!r}", ResourceWarning, source=self,
                          stacklevel=2)


class ReadPipeTransport(_PipeTransport, asyncio.ReadTransport):
    """The reading end of a pipe, as ``loop.connect_read_pipe`` returns it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: LoopPort, pipe: Any,
                 protocol: asyncio.Protocol, extra: dict[str, Any] | None = None, *,
                 skip_on_success: bool = False) -> None:
        super().__init__(loop, port, pipe, protocol, extra, skip_on_success)
        self._reading_protocol = protocol
        self._read_op: ReadOperation | None = None
        self._spare: ReadOperation | None = None  # a completed read whose buffer is reused
        self._paused = False
        self._held: bytes | None = None  # read while paused
        # With skip-on-success the next read waits for the loop to be idle (module essay).
        self._next_read: Callable[[Callable[[], None]], object] = (
            loop._want_receive if skip_on_success  # type: ignore[attr-defined]
            else loop.call_soon)
        loop.call_soon(protocol.connection_made, self)

    def start_reading(self) -> None:
        """Issue the first read: called once the caller holds the transport (a read that finds
        the pipe already broken calls ``connection_lost`` at once, which must not come before
        ``connect_read_pipe`` has returned; ``asyncio.base_subprocess`` relies on it)."""
        self._next_read(self._read)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        super().set_protocol(protocol)
        self._reading_protocol = protocol

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if not self._paused or self._closing:
            return
        self._paused = False
        held, self._held = self._held, None
        if held is not None:
            self._loop.call_soon(self._deliver, held)
        else:
            self._next_read(self._read)

    def _read(self) -> None:
        """Issue one read. Pending, it completes through the port; completed at once (data
        found with skip-on-success, or end of data: F12), it is handled now."""
        if self._closing or self._paused or self._read_op is not None:
            return
        operation = self._issue_read(READ_SIZE, self._spare, "Fatal read error on pipe transport")
        if operation is not None:
            self._read_done(operation)

    def _completed(self, operation: Operation) -> None:
        """The read's completion, dispatched by the loop."""
        assert isinstance(operation, ReadOperation)
        self._io.completed(operation)
        self._read_op = None
        self._read_done(operation)

    def _read_done(self, operation: ReadOperation) -> None:
        if self._closing:
            return  # cancelled by close(), or data nobody will read
        if operation.at_end:
            self._end_of_data()
            return
        try:
            data = operation.data
        except (NtStatusError, OSError) as exc:
            self._fatal_error(exc, "Fatal read error on pipe transport")
            return
        self._spare = operation
        if not data:
            self._next_read(self._read)
        elif self._paused:
            self._held = data
        else:
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        if self._closing:
            return
        self._reading_protocol.data_received(data)
        self._next_read(self._read)

    def _end_of_data(self) -> None:
        if self._closing:
            return
        # Whatever eof_received() returns, the transport closes: a pipe is one-way, so after
        # its end nothing can be read or written on it (as the stdlib's pipe transports).
        self._reading_protocol.eof_received()
        self._lose(None)

    def close(self) -> None:
        if self._closing:
            return
        self._cancel(self._read_op)
        self._lose(None)

    def _abort(self, exc: Exception | None) -> None:
        self._cancel(self._read_op)
        self._lose(exc)


class WritePipeTransport(_PipeTransport, WriteFlowControl, asyncio.WriteTransport):
    """The writing end of a pipe, as ``loop.connect_write_pipe`` returns it."""

    _write_error = "Fatal write error on pipe transport"

    def __init__(self, loop: asyncio.AbstractEventLoop, port: LoopPort, pipe: Any,
                 protocol: asyncio.BaseProtocol, extra: dict[str, Any] | None = None, *,
                 skip_on_success: bool = False) -> None:
        super().__init__(loop, port, pipe, protocol, extra, skip_on_success)
        self._write_op: WriteOperation | None = None
        self._buffer = bytearray()  # written while a write was in flight, not yet sent
        self._init_flow_control()
        self._draining_to_close = False
        self._eof_called = False
        loop.call_soon(protocol.connection_made, self)

    # -- writing ---------------------------------------------------------------------------
    def get_write_buffer_size(self) -> int:
        return self._in_flight + len(self._buffer)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._check_write(data, self._eof_called)
        if self._closing or not data:
            return  # closed, aborted or lost: asyncio transports drop such writes (drain()
            # then raises ConnectionResetError once connection_lost was called)
        if self._write_op is None:
            self._send(data)
        else:
            self._buffer += data
        self._maybe_pause_protocol()

    def _completed(self, operation: Operation) -> None:
        """The write's completion, dispatched by the loop."""
        assert isinstance(operation, WriteOperation)
        self._io.completed(operation)
        self._write_op = None
        self._in_flight = 0
        if self._closing and not self._draining_to_close:
            return  # aborted
        try:
            operation.result()
        except (NtStatusError, OSError) as exc:
            self._fatal_error(exc, self._write_error)
            return
        self._keep_spare(operation)
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            self._send(data)
            if self._lost:
                return
        if self._write_op is None and self._draining_to_close:
            self._lose(None)
            return
        self._maybe_resume_protocol()

    def reader_closed(self) -> None:
        """The pipe's reader is known to be gone (the child process exited): nothing can be
        written any more. With a write in flight this is a broken pipe, otherwise a close.
        (A child's stdin is a one-way pipe, so unlike the Proactor loop's duplex pipes its
        reader's close cannot be watched by a read: the loop calls this on the child's exit.)"""
        if self._lost:
            return
        if self._write_op is not None or self._buffer:
            self._abort(BrokenPipeError("the pipe's reader closed"))
        else:
            self._closing = True
            self._draining_to_close = True
            self._lose(None)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._eof_called = True
        self.close()  # a pipe's end of data is its writer closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._draining_to_close = True
        if self._write_op is None:
            self._lose(None)

    def abort(self) -> None:
        self._abort(None)

    def _abort(self, exc: Exception | None) -> None:
        self._draining_to_close = False
        self._buffer.clear()
        self._cancel(self._write_op)
        self._lose(exc)
