"""asyncio socket transports on overlapped ``WSARecv`` / ``WSASend`` completing on the loop's port.

``AfdEventLoop`` gives every connected stream socket (servers, ``create_connection``,
``connect_accepted_socket``, the raw socket under SSL) a :class:`SocketTransport` built on
:class:`iocp.SocketIO`. The rules:

- **Who owns the buffers.** A receive reads into the memory of an :class:`iocp.ReadOperation`
  and a send writes from a private copy in an :class:`iocp.WriteOperation`; the port holds each
  operation until its completion is seen, whatever happens to the transport (closed, aborted,
  collected). The protocol only ever sees copies: ``data_received`` gets ``bytes``, and a
  ``BufferedProtocol``'s ``get_buffer()`` memory is filled by a copy after the receive
  completed — no Python object's address is handed to the kernel.
- **One receive and one send in flight; a turn's writes go out as one send.** ``write()`` only
  queues its bytes (a ``bytes`` argument is kept as it is, anything else copied, since the
  caller may change it), and the loop flushes each transport's queue as one ``WSASend`` before
  it next polls, i.e. after every ready callback of the turn ran (``_want_flush``), and again
  when ``run_forever`` returns, so a write is never left unsent by a stopped loop. A protocol
  that writes several times per turn (a stream relaying one big receive in 64 KiB writes, a
  header and a body) makes one call instead of several: under Wine each call is about three
  wineserver round trips, on Windows a kernel transition (ACTIVE_KB AS11). While a send is
  pending, writes queue behind it and go out as one ``WSASend`` when it completes.
- **Inline completions, and when a receive is issued.** The socket gets skip-on-success when
  it is its own base handle (``iocp.socket_io.skip_is_safe``): a receive that finds data, or a
  send the socket buffer takes, returns ``COMPLETED`` with no packet, no wait and no dequeue
  (3 wineserver requests under Wine, where a receive that waits costs about 7: ACTIVE_KB AS2).
  So *when* a receive is issued decides what it costs: a transport does not issue its next
  receive itself but queues it with the loop (``_want_receive``), which issues queued
  receives in order when it is idle — after every ready callback ran, i.e. after the
  protocols reacted to the last data (a reply written), so the peer's answer is usually there
  already — stopping at the first that delivers data so that its callbacks run first; and, so
  that a busy loop still reads, all of them at each zero-timeout poll it does not skip. A
  receive completed inline is delivered at once and the transport's next receive goes to
  the back of the queue: the inline budget is one receive per transport per turn, so a socket
  that is always readable cannot starve the loop or another socket. A receive that is
  ``PENDING`` completes through the port (``IO_KEY``), and the loop calls
  :meth:`SocketTransport._completed` through ``call_soon``.
- **Receive size.** The first receive asks for :data:`READ_SIZE` bytes; one that fills its
  buffer doubles the next, up to :data:`READ_MAX`. The buffer is reused while it is big
  enough.
- **The socket is this loop's for good.** A handle is associated with one completion port for
  its whole life and skip-on-success cannot be cleared: a socket that had a transport here can
  not later be driven by another loop's completion-based I/O, and a non-overlapped call on it
  never queues packets but an overlapped one from elsewhere would land on this port. As with the
  stdlib loops, the transport owns and closes the socket. A socket that cannot be associated
  (already associated with another port) gets the selector loop's readiness transport instead.
- **Pause/resume reading.** ``pause_reading`` issues no further receive; a receive already in
  flight that completes meanwhile is held and delivered (through ``call_soon``) on
  ``resume_reading``. No ``data_received`` is ever called while paused.
- **Write flow control** is asyncio's (``afd.aio_transport``): ``pause_writing`` above the
  high-water mark of bytes not yet sent (in flight + queued), ``resume_writing`` at the low.
  The default high-water mark is :data:`WRITE_HIGH_WATER` (256 KiB; the low one a quarter of
  it), not the stdlib transports' 64 KiB: asyncio leaves the default to the implementation,
  and since a turn's writes leave as one send, it is also how much a writer that does not
  wait (``write`` then ``drain``, which only waits when paused) puts in one call. A stream
  writing 64 KiB blocks then makes one ``WSASend`` per 320 KiB instead of per 128 KiB
  (ACTIVE_KB AS11). ``set_write_buffer_limits`` sets other limits as usual; the price is up
  to that much more memory held per connection whose peer does not read.
- **Half-close.** ``write_eof`` is ``shutdown(SHUT_WR)`` once every buffered byte is sent. A
  receive of 0 bytes is the peer's end: ``eof_received``, and unless it returns true the
  transport closes; if it returns true no further receive is issued but writing goes on.
- **Close and abort.** ``close`` cancels the receive in flight (``NtCancelIoFileEx``) and
  schedules ``connection_lost(None)`` once the buffered bytes are sent; ``abort`` drops the
  buffer and cancels both requests. The socket is closed right after ``connection_lost``; the
  cancelled requests' completions arrive later and are ignored (the port keeps their memory
  until then). ``connection_lost`` is called exactly once, and nothing after it.
- **Errors.** A failing request (peer reset, network down) aborts the transport with the error,
  mapped to ``ConnectionResetError`` / ``ConnectionAbortedError`` like the Proactor loop does,
  so ``StreamReader`` and ``drain()`` raise what applications expect.
"""

from __future__ import annotations

import asyncio
import ctypes
import socket
import warnings
from asyncio import base_events, constants, sslproto, trsock
from collections.abc import Callable
from typing import Any

from iocp import ReadOperation, SocketIO, WriteOperation
from iocp.operation import Operation
from ntdll import NtStatusError
from ntdll import status as ntstatus

from .aio_transport import CompletionTransport, WriteFlowControl, set_result_unless_cancelled

__all__ = ["READ_MAX", "READ_SIZE", "WRITE_HIGH_WATER", "SocketTransport", "make_ssl_transport"]

READ_SIZE = 16 * 1024
"""Bytes asked by a transport's first receive; a receive that fills its buffer doubles the
next one's size, up to :data:`READ_MAX` (a quiet connection keeps a small buffer, a streaming
one moves more per request)."""

READ_MAX = 256 * 1024

WRITE_HIGH_WATER = 256 * 1024
"""A socket transport's default write high-water mark (module essay, "Write flow control")."""

_RESET = frozenset({ntstatus.STATUS_CONNECTION_RESET, ntstatus.STATUS_REMOTE_DISCONNECT,
                    ntstatus.STATUS_LOCAL_DISCONNECT})


def _failure(operation: Operation, verb: str) -> OSError:
    """The exception of a failed request, as the stdlib loops would raise it."""
    status = operation.status or 0
    error = NtStatusError(status, f"socket {verb}")
    if status in _RESET:
        return ConnectionResetError(f"{error}")
    if status == ntstatus.STATUS_CANCELLED:
        return ConnectionAbortedError(f"{error}")
    return error


class SocketTransport(CompletionTransport, WriteFlowControl, asyncio.Transport):
    """A connected stream socket's transport on :class:`iocp.SocketIO` (module essay)."""

    _start_tls_compatible = True
    _write_error = "Fatal write error on socket transport"
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    def __init__(self, loop: asyncio.AbstractEventLoop, io: SocketIO, sock: socket.socket,
                 protocol: asyncio.BaseProtocol, waiter: asyncio.Future[Any] | None = None,
                 extra: dict[str, Any] | None = None, server: Any = None) -> None:
        extra = dict(extra or {})
        extra["socket"] = trsock.TransportSocket(sock)
        try:
            extra["sockname"] = sock.getsockname()
        except OSError:
            extra["sockname"] = None
        if "peername" not in extra:
            try:
                extra["peername"] = sock.getpeername()
            except OSError:
                extra["peername"] = None
        super().__init__(loop, protocol, extra)
        self._init_flow_control()
        self._set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._sock: socket.socket | None = sock
        self._sock_fd = sock.fileno()
        self._io = io
        self._server = server
        self._io_seen: Callable[[], None] = loop._io_seen  # type: ignore[attr-defined]
        self._want_receive: Callable[[Callable[[], None]], None] = (
            loop._want_receive)  # type: ignore[attr-defined]
        self.set_protocol(protocol)
        # reading
        self._read_op: ReadOperation | None = None
        self._spare: ReadOperation | None = None  # a completed receive whose buffer is reused
        self._read_size = READ_SIZE
        self._held: ReadOperation | None = None  # received while paused
        self._paused = False
        self._eof = False  # the peer's end of data was seen
        # writing
        self._write_op: WriteOperation | None = None
        self._queue: list[bytes] = []  # written, not yet sent (behind the send in flight)
        self._queued = 0  # their bytes
        self._flush_wanted = False  # the loop will call _flush before it next polls
        self._want_flush: Callable[[Callable[[], None]], None] = (
            loop._want_flush)  # type: ignore[attr-defined]
        self._eof_requested = False  # write_eof() called
        self._eof_sent = False  # shutdown(SHUT_WR) done
        if server is not None:
            server._attach()
        loop._transports[self._sock_fd] = self  # type: ignore[attr-defined]
        base_events._set_nodelay(sock)  # type: ignore[attr-defined]
        loop.call_soon(self._protocol.connection_made, self)
        loop.call_soon(self._want_receive, self._read)
        if waiter is not None:
            loop.call_soon(set_result_unless_cancelled, waiter)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        super().set_protocol(protocol)
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    # -- reading ---------------------------------------------------------------------------
    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        if self.is_reading():
            self._paused = True

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        if self._paused or self._closing:
            return  # paused again before this ran: keep what is held
        held, self._held = self._held, None
        if held is not None and not self._deliver(held):
            return
        self._want_receive(self._read)

    def _read(self) -> None:
        """Issue one receive (the loop calls this from its receive queue). Completed inline,
        it is delivered at once and the next receive queued behind every other transport's;
        pending, it completes through the port."""
        if (self._read_op is not None or self._held is not None or self._paused
                or self._closing or self._eof):
            return
        spare = self._spare
        if spare is not None and spare.information >= self._read_size < READ_MAX:
            self._read_size *= 2  # the last receive filled its buffer: ask for more
            spare = None
        operation = self._issue_read(self._read_size, spare,
                                     "Fatal read error on socket transport")
        if operation is not None and self._deliver(operation):
            self._want_receive(self._read)

    def _deliver(self, operation: ReadOperation) -> bool:
        """Hand a completed receive to the protocol; whether to go on reading."""
        count = operation.information
        if not count:
            self._spare = operation
            self._eof_received()
            return False
        try:
            if self._buffered:
                self._feed_buffered(operation, count)
            else:
                data = operation.data
                self._spare = operation
                self._protocol.data_received(data)  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            return False
        return True

    def _feed_buffered(self, operation: ReadOperation, count: int) -> None:
        """Copy ``count`` received bytes into the ``BufferedProtocol``'s own buffers."""
        data = memoryview(operation.data)
        self._spare = operation
        protocol = self._protocol
        assert isinstance(protocol, asyncio.BufferedProtocol)
        while data:
            buffer = memoryview(protocol.get_buffer(len(data))).cast("B")
            size = min(len(buffer), len(data))
            if not size:
                raise RuntimeError("get_buffer() returned an empty buffer")
            buffer[:size] = data[:size]
            protocol.buffer_updated(size)
            data = data[size:]

    def _eof_received(self) -> None:
        self._eof = True
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    def _read_completed(self, operation: ReadOperation) -> None:
        self._read_op = None
        if self._closing:
            return  # cancelled by close()/abort(), or data nobody will read
        if not operation.succeeded:
            self._fatal_error(_failure(operation, "receive"),
                              "Fatal read error on socket transport")
            return
        if self._paused:
            self._held = operation
        elif self._deliver(operation):
            self._want_receive(self._read)

    # -- writing ---------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._check_write(data, self._eof_requested)
        if not data or self._lost:
            return  # lost: asyncio transports drop such writes (drain() then raises)
        chunk = data if type(data) is bytes else bytes(data)
        self._queue.append(chunk)
        self._queued += len(chunk)
        if self._write_op is None and not self._flush_wanted:
            self._flush_wanted = True
            self._want_flush(self._flush)
        self._maybe_pause_protocol()

    def get_write_buffer_size(self) -> int:
        return self._in_flight + self._queued

    def _flush(self) -> None:
        """Send what was written as one ``WSASend`` (the loop calls this before it polls; a
        completed send calls it at once). With nothing in flight afterwards, the protocol
        may write again and a pending close or ``write_eof`` goes ahead."""
        self._flush_wanted = False
        if self._write_op is not None or self._lost:
            return
        queue = self._queue
        if queue:
            data = queue[0] if len(queue) == 1 else b"".join(queue)
            self._queue = []
            self._queued = 0
            self._send(data)
            if self._lost:
                return
        self._maybe_resume_protocol()
        if self._write_op is None:
            self._flushed()

    def _write_completed(self, operation: WriteOperation) -> None:
        in_flight, self._in_flight = self._in_flight, 0
        self._write_op = None
        if self._lost:
            return  # aborted, or lost through an error
        if not operation.succeeded:
            self._fatal_error(_failure(operation, "send"),
                              "Fatal write error on socket transport")
            return
        sent = operation.information
        if sent < in_flight:  # a partial completion: send what is left first
            buffer = operation.buffer
            assert buffer is not None
            rest = ctypes.string_at(ctypes.addressof(buffer) + sent, in_flight - sent)
            self._queue.insert(0, rest)
            self._queued += len(rest)
        else:
            self._keep_spare(operation)
        self._flush()

    def _flushed(self) -> None:
        """Every byte written so far is sent: finish a pending close or write_eof."""
        if self._closing:
            self._lose(None)
        elif self._eof_requested:
            self._shutdown()

    def _shutdown(self) -> None:
        sock = self._sock
        if sock is None or self._eof_sent:
            return
        self._eof_sent = True
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal_error(exc, "Fatal error on shutdown(SHUT_WR)")

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_requested:
            return
        self._eof_requested = True
        if self._write_op is None and not self._queue:
            self._shutdown()

    # -- completions, closing --------------------------------------------------------------
    def _completed(self, operation: Operation) -> None:
        """A pending request's completion, dispatched by the loop."""
        self._io.completed(operation)
        if isinstance(operation, ReadOperation):
            self._read_completed(operation)
        else:
            assert isinstance(operation, WriteOperation)
            self._write_completed(operation)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._cancel(self._read_op)
        if self._write_op is None and not self._queue:
            self._lose(None)

    def abort(self) -> None:
        self._abort(None)

    def _abort(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._queue.clear()
        self._queued = 0
        self._cancel(self._write_op)
        self._cancel(self._read_op)
        self._lose(exc)

    def _force_close(self, exc: Exception | None) -> None:
        """What asyncio's ``SSLProtocol`` calls on a fatal TLS error or shutdown timeout (the
        stdlib transports' name for abort with an exception)."""
        self._abort(exc)

    def _cancel(self, operation: Operation | None) -> None:
        if operation is not None:
            self._io.cancel(operation)

    def _release(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._io.close()
        sock.close()
        self._held = None
        server, self._server = self._server, None
        if server is not None:
            server._detach()

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "closing" if self._closing else "open"
        return (f"<{type(self).__name__} fd={self._sock_fd} {state} "
                f"skip_on_success={self._io.skip_on_success}>")

    def __del__(self, _warn: Any = warnings.warn) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.close()


def make_ssl_transport(loop: asyncio.AbstractEventLoop, io: SocketIO, rawsock: socket.socket,
                       protocol: asyncio.BaseProtocol, sslcontext: Any,
                       waiter: asyncio.Future[Any] | None = None, *, server_side: bool = False,
                       server_hostname: str | None = None, extra: dict[str, Any] | None = None,
                       server: Any = None, **timeouts: Any) -> asyncio.Transport:
    """TLS over a :class:`SocketTransport`: asyncio's ``SSLProtocol`` (a ``BufferedProtocol``)
    runs on the raw socket's transport; the application gets its app transport."""
    ssl_protocol = sslproto.SSLProtocol(loop, protocol, sslcontext, waiter,  # type: ignore[arg-type]
                                        server_side,
                                        server_hostname, **timeouts)
    SocketTransport(loop, io, rawsock, ssl_protocol, extra=extra, server=server)
    return ssl_protocol._app_transport
