"""What the loop's completion-based transports share (pipes: ``afd.aio_pipes``; sockets:
``afd.aio_sockets``): the protocol, closing, losing the connection exactly once, fatal errors,
and write flow control.

Write flow control is asyncio's own ``transports._FlowControlMixin`` (the stdlib's selector and
Proactor transports use it too): ``pause_writing`` above the high-water mark of bytes not yet
written, ``resume_writing`` at or below the low-water mark, the same default limits, and the
``_protocol_paused`` flag that ``loop.sendfile``'s fallback reads.
"""

from __future__ import annotations

import asyncio
import ctypes
from asyncio import transports
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iocp import OperationState, OverlappedIO, ReadOperation, WriteOperation

__all__ = ["SPARE_MAX", "CompletionTransport", "WriteFlowControl", "set_result_unless_cancelled"]

SPARE_MAX = 256 * 1024
"""A completed write's buffer is kept for the next write only up to this size."""


def set_result_unless_cancelled(future: asyncio.Future[Any]) -> None:
    """Resolve a waiter with ``None`` unless it was cancelled meanwhile."""
    if not future.cancelled():
        future.set_result(None)


class CompletionTransport(asyncio.BaseTransport):
    """A transport whose I/O completes on the loop's port.

    ``connection_lost`` is scheduled exactly once (:meth:`_lose`), after which the subclass's
    :meth:`_release` frees the handle. Subclasses give :meth:`_abort` and :meth:`_release`.
    """

    _loop: asyncio.AbstractEventLoop

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.BaseProtocol,
                 extra: dict[str, Any] | None) -> None:
        asyncio.BaseTransport.__init__(self, extra)
        self._loop = loop
        self._protocol = protocol
        self._closing = False
        self._lost = False

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing

    def _lose(self, exc: Exception | None) -> None:
        """Schedule ``connection_lost(exc)`` once, then release the handle (at once, without
        telling the protocol, if the loop is already closed: a transport collected late)."""
        self._closing = True
        if self._lost:
            return
        self._lost = True
        if self._loop.is_closed():
            self._release()
            return
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._release()

    def _release(self) -> None:
        """Close the handle (``connection_lost`` was called, or the loop is gone)."""
        raise NotImplementedError

    if TYPE_CHECKING:  # the subclasses' reading state
        _io: OverlappedIO
        _read_op: ReadOperation | None
        _spare: ReadOperation | None
        _io_seen: Callable[[], None]

    def _issue_read(self, size: int, spare: ReadOperation | None,
                    error: str) -> ReadOperation | None:
        """Issue one read of up to ``size`` bytes (into ``spare``'s buffer if given). Returns
        the operation if it completed inline (skip-on-success, or a pipe's end of data: no
        packet is coming, and the loop is told new work came); ``None`` if it is pending
        (:attr:`_read_op` until its completion comes through the port) or failed (a fatal
        error with ``error`` as its message)."""
        try:
            operation = self._io.read(size, self, spare)
        except (OSError, ValueError) as exc:
            self._fatal_error(exc, error)
            return None
        self._spare = None
        if operation.state is not OperationState.COMPLETED:
            self._read_op = operation
            return None
        self._io_seen()
        return operation

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        """An I/O error: reported to the loop's exception handler unless it is an ``OSError``
        (a peer's reset is the connection's business, not a bug), then the transport aborts
        with it (``connection_lost(exc)``)."""
        if not isinstance(exc, OSError) or self._loop.get_debug():
            self._loop.call_exception_handler({
                "message": message, "exception": exc, "transport": self,
                "protocol": self._protocol})
        self._abort(exc if isinstance(exc, Exception) else None)

    def _abort(self, exc: Exception | None) -> None:
        raise NotImplementedError


class WriteFlowControl(transports._FlowControlMixin):
    """asyncio's write flow control for a :class:`CompletionTransport` (call
    :meth:`_init_flow_control` from ``__init__``; ``get_write_buffer_size`` is the subclass's)."""

    if TYPE_CHECKING:  # the mixin's private methods, which typeshed does not declare
        _protocol_paused: bool

        def _set_write_buffer_limits(self, high: int | None = None,
                                     low: int | None = None) -> None: ...
        def _maybe_pause_protocol(self) -> None: ...
        def _maybe_resume_protocol(self) -> None: ...

    _in_flight: int
    """Bytes of the write in flight."""
    _write_spare: WriteOperation | None
    """A completed write whose buffer the next write reuses (no allocation per write)."""
    _write_op: WriteOperation | None
    """The write in flight (its completion comes through the port)."""
    _io: OverlappedIO
    _write_error: str
    """The message of a fatal write error (``_fatal_error``'s)."""

    if TYPE_CHECKING:  # CompletionTransport's
        def _fatal_error(self, exc: BaseException, message: str) -> None: ...

    def _init_flow_control(self) -> None:
        # _FlowControlMixin.__init__ would call BaseTransport.__init__ a second time.
        self._protocol_paused = False
        self._set_write_buffer_limits()
        self._in_flight = 0
        self._write_spare = None

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        """Issue one write of ``data`` (copied). Pending, it is :attr:`_write_op` until its
        completion comes; completed inline (skip-on-success), it is over now and its buffer
        kept for the next write; an inline completion of part of it (only on errors) goes on
        with the rest."""
        while True:
            try:
                operation = self._io.write(data, self, self._write_spare)
            except (OSError, ValueError) as exc:
                self._fatal_error(exc, self._write_error)
                return
            self._write_spare = None
            if operation.state is not OperationState.COMPLETED:
                self._write_op = operation
                self._in_flight = len(data)
                return
            written = operation.information
            self._keep_spare(operation)
            if written >= len(data):
                return
            data = memoryview(data)[written:]

    def _keep_spare(self, operation: WriteOperation) -> None:
        """Keep a completed write's buffer for the next write, unless it is a big one."""
        buffer = operation.buffer
        if buffer is not None and ctypes.sizeof(buffer) <= SPARE_MAX:
            self._write_spare = operation

    @staticmethod
    def _check_write(data: object, eof_called: bool) -> None:
        """``write()``'s argument checks, as the stdlib transports make them."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not "
                            f"{type(data).__name__!r}")
        if eof_called:
            raise RuntimeError("Cannot call write() after write_eof()")
