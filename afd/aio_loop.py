"""``AfdEventLoop``: one asyncio loop with ``add_reader`` for any number of sockets, completion-
based socket transports, subprocesses and pipes, all on one completion port.

It is an ``asyncio.SelectorEventLoop`` (libraries such as aiodns and psycopg check that) whose
selector is an :class:`~afd.AfdSelector` running on the loop's :class:`~afd.aio_port.LoopPort`:

- ``add_reader`` / ``add_writer``, accepting connections, connecting and the ``sock_*`` methods
  are the selector loop's, on AFD polls (no 512-socket ceiling);
- connected stream sockets (servers, ``create_connection``, ``open_connection``,
  ``connect_accepted_socket``, and the raw socket under TLS) get ``afd.aio_sockets``'
  :class:`~afd.aio_sockets.SocketTransport`: overlapped ``WSARecv`` / ``WSASend`` with
  skip-on-success, completing inline or on the port (``_make_socket_transport`` /
  ``_make_ssl_transport``). The transport is registered in ``_transports`` as the selector
  loop's are, so ``add_reader`` on its socket raises. A socket another port already has falls
  back to the selector loop's readiness transport;
- ``connect_read_pipe`` / ``connect_write_pipe`` and the pipes of ``subprocess_exec`` /
  ``subprocess_shell`` are overlapped ``ReadFile`` / ``WriteFile`` completing on the same port
  (``afd.aio_pipes``), and children's exits are job-object messages on it
  (``afd.aio_subprocess``);
- ``call_soon_threadsafe`` posts a packet to the port (one ``NtSetIoCompletion``) instead of
  writing to the self-pipe socket; the self-pipe stays only as the ``signal.set_wakeup_fd`` of
  ``run_forever`` in the main thread, so Ctrl-C ends a wait at once.

Why ``sock_recv`` / ``sock_sendall`` stay readiness-based: they try the call at once and poll
only when it would block; a receive that has to wait costs the same wineserver requests either
way under Wine (about 7: ACTIVE_KB AS7), and an overlapped call would tie a socket the caller
still owns to this port for good.

The selector (``_LoopSelector``) also sends what socket transports were written in a turn
(one send per transport, before it polls), decides when their receives are issued (at idle, in
order) and skips zero-timeout polls right after I/O: see its ``select``.
"""

from __future__ import annotations

import asyncio
import collections
import selectors
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from iocp import WAKEUP_KEY, Completion, PortClosedError, SocketIO

from .aio_pipes import ChildPipe, ReadPipeTransport, WritePipeTransport
from .aio_port import IO_KEY, JOB_KEY, LoopPort
from .aio_sockets import SocketTransport, make_ssl_transport
from .aio_subprocess import ChildWatcher, SubprocessTransport
from .aio_transport import set_result_unless_cancelled
from .selector import AfdSelector

__all__ = ["MAX_SKIPPED_POLLS", "AfdEventLoop"]

MAX_SKIPPED_POLLS = 4
"""Zero-timeout polls skipped in a row after a dequeue that found something (so ready callbacks
that keep scheduling callbacks still see new I/O every few iterations)."""


class _LoopSelector(AfdSelector):
    """An :class:`AfdSelector` whose poller issues its polls on the loop's port (it takes the
    port over and closes it with the selector).
    ``tests/test_aio_loop.py::test_the_loop_is_a_selector_loop_on_one_port`` checks this.
    """

    def __init__(self, port: LoopPort) -> None:
        super().__init__(port=port)
        self._polls_skipped = 0
        self._just_dequeued = False
        self._io_seen = False
        self._receives: collections.deque[Callable[[], None]] = collections.deque()
        self._flushes: collections.deque[Callable[[], None]] = collections.deque()
        self.ready: collections.deque[Any] = collections.deque()
        """The loop's ready callbacks (``AfdEventLoop`` puts its own deque here): a flush that
        made callbacks ready must not be followed by a wait."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """As :meth:`AfdSelector.select`, with three changes that save wineserver round trips.

        - First the writes socket transports queued since the last call go out, one send per
          transport (:meth:`want_flush`): every ready callback of the turn has run, so all a
          protocol wrote in it leaves in one call. If that made callbacks ready (a protocol
          resumed, a connection lost), the call does not wait.
        - A zero-timeout call right after a call that found I/O returns ``[]`` without asking
          the kernel, at most :data:`MAX_SKIPPED_POLLS` times in a row: the loop asks with
          timeout 0 whenever callbacks are ready, which after a batch of I/O is nearly always,
          and under Wine each ask is a round trip that rarely finds anything new (ACTIVE_KB
          A9). Completions are never lost by a skip: they stay queued on the port.
        - Receives that socket transports want to issue (:meth:`want_receive`) are issued here,
          in the order asked, when the loop has nothing else to do (``timeout`` is not 0) and,
          so that a busy loop still reads, at every zero-timeout call that is not skipped. A
          receive issued after every ready callback ran (the protocols' reactions: the reply
          written) finds the peer's answer already there far more often, and completes inline
          with no packet, no wait and no dequeue (ACTIVE_KB AS2). Once one delivered data, the
          loop runs the callbacks that woke before asking the kernel.
        """
        if self._flushes:
            self.flush()
            if self.ready:
                timeout = 0
        idle = timeout is None or timeout > 0
        if (not idle and self._just_dequeued and self._polls_skipped < MAX_SKIPPED_POLLS):
            self._polls_skipped += 1
            return []
        if self._receives and self._issue_receives(stop_at_data=idle):
            self._just_dequeued = True
            if idle and self._polls_skipped < MAX_SKIPPED_POLLS:
                self._polls_skipped += 1
                return []  # data came in: run its callbacks before asking the kernel
            timeout = 0
        self._polls_skipped = 0
        ready = super().select(timeout)
        self._just_dequeued = bool(ready) or self._port_took()
        return ready

    def want_receive(self, receive: Callable[[], None]) -> None:
        """Call ``receive`` (a transport issuing its next receive) at the next
        :meth:`select` that may issue receives."""
        self._receives.append(receive)

    def want_flush(self, flush: Callable[[], None]) -> None:
        """Call ``flush`` (a transport sending what it was written) at the start of the next
        :meth:`select`, or at :meth:`flush`."""
        self._flushes.append(flush)

    def flush(self) -> None:
        """Send every transport's queued writes now (each flush is taken off the queue before
        it runs: if one raises, the others stay queued for the next call)."""
        flushes = self._flushes
        while flushes:
            flushes.popleft()()

    def _issue_receives(self, stop_at_data: bool) -> bool:
        """Issue the receives wanted when this began, in order (``stop_at_data``: until one
        delivers data inline); whether one did."""
        receives = self._receives
        self._io_seen = False
        for _ in range(len(receives)):
            receives.popleft()()
            if stop_at_data and self._io_seen:
                return True
        return self._io_seen

    def close(self) -> None:
        self._receives.clear()  # transports' bound methods: let them go with the loop
        self._flushes.clear()
        super().close()

    def io_seen(self) -> None:
        """The loop's own I/O completed inline (no packet): new work, as after a dequeue that
        found something."""
        self._io_seen = True
        self._just_dequeued = True

    def _port_took(self) -> bool:
        port = self._poller._port
        return isinstance(port, LoopPort) and port.has_diverted


class AfdEventLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop for Windows on one I/O completion port: ``add_reader`` /
    ``add_writer`` for any number of sockets (AFD polls), subprocesses and pipes (overlapped
    I/O), immediate wake-ups for Ctrl-C and ``call_soon_threadsafe``."""

    def __init__(self) -> None:
        self._port = LoopPort()
        try:
            selector = _LoopSelector(self._port)
        except BaseException:
            self._port.close()
            raise
        self._children = ChildWatcher(self._port)
        super().__init__(selector)
        selector.ready = self._ready  # type: ignore[attr-defined]

    # -- the one port --------------------------------------------------------------------
    @property
    def port(self) -> LoopPort:
        """The loop's completion port (every request the loop issues completes there)."""
        return self._port

    def _process_events(self, event_list: Any) -> None:
        super()._process_events(event_list)  # type: ignore[misc]
        self._port.dispatch(self._dispatch)

    def _io_seen(self) -> None:
        """A transport's request completed inline (see ``_LoopSelector.io_seen``)."""
        self._selector.io_seen()  # type: ignore[attr-defined]

    def _want_receive(self, receive: Callable[[], None]) -> None:
        """Issue a socket transport's next receive when the loop is idle (``_LoopSelector``)."""
        self._selector.want_receive(receive)  # type: ignore[attr-defined]

    def _want_flush(self, flush: Callable[[], None]) -> None:
        """Send a socket transport's queued writes before the loop next polls
        (``_LoopSelector``)."""
        self._selector.want_flush(flush)  # type: ignore[attr-defined]

    def _dispatch(self, completion: Completion) -> None:
        if completion.key == IO_KEY:
            operation = completion.operation
            if operation is not None and operation.tag is not None:
                self.call_soon(operation.tag._completed, operation)
        elif completion.key == JOB_KEY:
            self._children.message(completion.information, completion.apc_context)

    def _write_to_self(self) -> None:
        """Wake the loop (from any thread): one packet on the port, no socket round trip."""
        try:
            self._port.wakeup()
        except (PortClosedError, OSError):
            pass  # closed: nothing to wake

    def run_forever(self) -> None:
        """Run until ``stop()``; in the main thread, a signal (Ctrl-C) wakes the wait at once.
        Writes the last turn queued are sent before it returns (a caller that stops the loop
        and waits for the peer's answer outside it gets one)."""
        try:
            csock = getattr(self, "_csock", None)
            if csock is None or threading.current_thread() is not threading.main_thread():
                super().run_forever()
                return
            previous = signal.set_wakeup_fd(csock.fileno(), warn_on_full_buffer=False)
            try:
                super().run_forever()
            finally:
                signal.set_wakeup_fd(previous)
        finally:
            if not self.is_closed() and not self.is_running():  # not another run's turn
                self._selector.flush()  # type: ignore[attr-defined]

    # -- sockets -------------------------------------------------------------------------
    def _socket_io(self, sock: socket.socket) -> SocketIO | None:
        """The socket's overlapped I/O on the loop's port, or ``None`` if it cannot be
        associated (another port has it): it then gets the selector loop's transport."""
        try:
            return SocketIO(self._port, sock, IO_KEY)
        except OSError:
            return None

    def _make_socket_transport(self, sock: socket.socket, protocol: asyncio.BaseProtocol,
                               waiter: asyncio.Future[Any] | None = None, *,
                               extra: dict[str, Any] | None = None,
                               server: Any = None) -> asyncio.Transport:
        io = self._socket_io(sock)
        if io is None:
            return super()._make_socket_transport(  # type: ignore[misc,no-any-return]
                sock, protocol, waiter, extra=extra, server=server)
        return SocketTransport(self, io, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(self, rawsock: socket.socket, protocol: asyncio.BaseProtocol,
                            sslcontext: Any, waiter: asyncio.Future[Any] | None = None, *,
                            server_side: bool = False, server_hostname: str | None = None,
                            extra: dict[str, Any] | None = None, server: Any = None,
                            **timeouts: Any) -> asyncio.Transport:
        io = self._socket_io(rawsock)
        if io is None:
            return super()._make_ssl_transport(  # type: ignore[misc,no-any-return]
                rawsock, protocol, sslcontext, waiter, server_side=server_side,
                server_hostname=server_hostname, extra=extra, server=server, **timeouts)
        return make_ssl_transport(self, io, rawsock, protocol, sslcontext, waiter,
                                  server_side=server_side, server_hostname=server_hostname,
                                  extra=extra, server=server, **timeouts)

    # -- pipes ---------------------------------------------------------------------------
    async def connect_read_pipe(  # type: ignore[override]
            self, protocol_factory: Callable[[], asyncio.BaseProtocol], pipe: Any,
    ) -> tuple[asyncio.ReadTransport, asyncio.BaseProtocol]:
        """Read from a pipe handle opened for overlapped I/O (see ``afd.aio_pipes``)."""
        protocol = protocol_factory()
        assert isinstance(protocol, asyncio.Protocol)
        transport = ReadPipeTransport(self, self._port, pipe, protocol,
                                      skip_on_success=isinstance(pipe, ChildPipe))
        await self._connected(transport)
        transport.start_reading()
        return transport, protocol

    async def connect_write_pipe(  # type: ignore[override]
            self, protocol_factory: Callable[[], asyncio.BaseProtocol], pipe: Any,
    ) -> tuple[asyncio.WriteTransport, asyncio.BaseProtocol]:
        """Write to a pipe handle opened for overlapped I/O (see ``afd.aio_pipes``)."""
        protocol = protocol_factory()
        transport = WritePipeTransport(self, self._port, pipe, protocol,
                                       skip_on_success=isinstance(pipe, ChildPipe))
        await self._connected(transport)
        return transport, protocol

    async def _connected(self, transport: asyncio.BaseTransport) -> None:
        """Return once ``connection_made`` has run (it was scheduled first): as the stdlib
        loops' ``connect_*_pipe`` do, so a caller never holds a transport whose protocol has
        not seen it yet."""
        waiter = self.create_future()
        self.call_soon(set_result_unless_cancelled, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise

    # -- subprocesses --------------------------------------------------------------------
    async def _make_subprocess_transport(
            self, protocol: asyncio.SubprocessProtocol, args: Any, shell: bool, stdin: Any,
            stdout: Any, stderr: Any, bufsize: int, extra: dict[str, Any] | None = None,
            **kwargs: Any) -> asyncio.SubprocessTransport:
        waiter = self.create_future()
        transport = SubprocessTransport(self, protocol, args, shell, stdin, stdout, stderr,
                                        bufsize, waiter=waiter, extra=extra, **kwargs)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        return transport

    # -- closing -------------------------------------------------------------------------
    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        try:
            super().close()  # the selector closes the poller, which closes the port
        finally:
            self._children.close()


assert WAKEUP_KEY not in (IO_KEY, JOB_KEY)
