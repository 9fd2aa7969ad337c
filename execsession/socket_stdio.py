"""SocketStdioSession: the connection itself as the child's stdin and stdout — nothing relayed.

Why: a relay, however lean, wakes the server twice per round trip (the client's bytes into the
child's stdin, its answer back out): on Linux ours costs ~30 us of Python per round trip that
``ncat -e``'s C loop does not, and both pay the two extra wake-ups. The design inetd, systemd's
``Accept=yes``, ``tcpserver`` and the original ``nc -e`` use costs neither: the child's stdin and
stdout *are* the socket, and the server only waits for the child's exit (ACTIVE_KB SB4).

The rules it keeps
------------------
* The socket is put back in blocking mode before the spawn: the child shares the server's open
  file description, ``O_NONBLOCK`` included, and programs expect blocking stdio.
* The fd stays open until the spawn is over (``Process.close`` waits for one under way): were it
  closed and its number reused meanwhile, the spawner thread would give the child that file.
* While the child runs the server never reads or writes the socket. It watches it for a hang-up
  or an error only (epoll reports those with no event asked): the connection is then over both
  ways (the client reset it, usually), and the session ends as ``client-disconnected``, the tree
  killed, as a relay's failed read or write does. The child may see the reset first and die of
  it: an exit that finds the connection closed (``TCP_CLOSE``) or in error ends the same way.
* The child's exit ends the session: what it left running is killed at once (the server cannot
  tell whether it still holds the socket, so ``drain_timeout`` does not apply), the write side
  is shut — the client gets FIN after every byte the child wrote — and the client's EOF is
  awaited for ``close_timeout``, what comes discarded, so that the close is graceful.
* Byte counts come from ``TCP_INFO`` and ``SIOCOUTQ`` (Linux): the payload the connection
  received, and the payload written to it. Pauses and buffers are the kernel's: the result
  reports none.

What a relay does that this cannot (:attr:`ExecSessionConfig.needs_relay`): ``stderr=separate``,
idle and connect timeouts. ``stdio=auto`` relays when a config asks for one of them.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .config import ExecSessionConfig, StdioMode
from .loop import Loop, Process, Stream
from .session import READ_CHUNK, ExecSession, SessionBase, SessionResult

__all__ = ["SocketStdioSession", "open_session", "tcp_byte_counts", "uses_socket_stdio"]

log = logging.getLogger("execsession")

_TCP_INFO = getattr(socket, "TCP_INFO", None)
# struct tcp_info (linux/tcp.h): tcpi_state at 0; tcpi_bytes_acked and tcpi_bytes_received
# (u64, Linux 4.1/4.2) at 120, each counting a FIN as one byte (it takes a sequence number).
# What the child wrote is more than what was acknowledged while its last bytes are in flight
# (the session may end then: the kernel still delivers them after close): SIOCOUTQ adds the
# bytes written and not yet acknowledged, our FIN included once sent (ACTIVE_KB SB5).
_COUNTS = struct.Struct("=QQ")
_COUNTS_OFFSET = 120
_SIOCOUTQ = 0x5411  # = TIOCOUTQ (linux/sockios.h)
_TCP_CLOSE = 7
_FIN_RECEIVED_STATES = frozenset((6, 8, 9, 11))  # TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING


if sys.platform != "win32":
    import fcntl

    def _send_queue(fd: int) -> int:
        """Bytes written to a TCP socket and not yet acknowledged (``SIOCOUTQ``)."""
        return int(struct.unpack("=i", fcntl.ioctl(fd, _SIOCOUTQ, b"\0" * 4))[0])
else:
    def _send_queue(fd: int) -> int:
        return 0  # no TCP_INFO on Windows either


def tcp_byte_counts(sock: socket.socket, *, eof_seen: bool = False,
                    fin_sent: bool = False) -> tuple[int, int]:
    """``(received, sent)``: the payload bytes a TCP connection received from its peer, and
    those written to it (acknowledged or still queued), from ``TCP_INFO`` and ``SIOCOUTQ``;
    ``(0, 0)`` where there is none (not Linux, not TCP, a closed socket). ``eof_seen``: the
    peer's FIN was read; ``fin_sent``: ours was (``shutdown``) — a FIN is not a byte."""
    if _TCP_INFO is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return 0, 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
        queued = _send_queue(sock.fileno())
    except OSError:
        return 0, 0
    if len(info) < _COUNTS_OFFSET + _COUNTS.size:
        return 0, 0
    acknowledged, received = _COUNTS.unpack_from(info, _COUNTS_OFFSET)
    if received and (eof_seen or info[0] in _FIN_RECEIVED_STATES):
        received -= 1
    sent = acknowledged + max(0, queued)
    if sent and fin_sent:
        sent -= 1
    return received, sent


def _why_not(loop: Loop, sock: socket.socket) -> str | None:
    """Why ``sock`` cannot be a child's stdio on ``loop`` (``None``: it can)."""
    if not getattr(loop, "SOCKET_STDIO", False):
        return f"the {loop.backend} loop here cannot (Linux's selectors loop can)"
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return "only a TCP connection is handed over"
    return None


def uses_socket_stdio(loop: Loop, sock: socket.socket, config: ExecSessionConfig) -> bool:
    """Whether a session for ``sock`` gives the child the connection itself: ``stdio=socket``,
    or ``auto`` where the loop can and the config needs no relay. Raises ``ValueError`` for
    ``stdio=socket`` where the loop or the socket cannot (saying which)."""
    if config.stdio is StdioMode.PIPES:
        return False
    reason = _why_not(loop, sock)
    if config.stdio is StdioMode.SOCKET:
        if reason is not None:
            raise ValueError(f"stdio=socket: {reason}; use stdio=pipes or auto")
        return True
    return reason is None and config.needs_relay is None


def open_session(sock: socket.socket, command: Sequence[str] | str, *, loop: Loop,
                 config: ExecSessionConfig, **options: Any) -> SessionBase:
    """The session ``config.stdio`` asks for on ``loop``: a :class:`SocketStdioSession` or a
    relaying :class:`ExecSession` (``options`` are their common keyword arguments)."""
    if uses_socket_stdio(loop, sock, config):
        return SocketStdioSession(sock, command, loop=loop, config=config, **options)
    return ExecSession(sock, command, loop=loop, config=config, **options)


class SocketStdioSession(SessionBase):
    """Runs ``command`` with ``sock`` (connected; the session owns and closes it) as its stdin
    and stdout (and stderr, in ``merge`` mode). The same interface as
    :class:`execsession.ExecSession`: :meth:`start`, ``on_done(result)`` once everything is
    released, :meth:`abort`, :meth:`close`, :meth:`run` without a loop. ``stderr_sink`` is
    accepted for that interface's sake and never called (``separate`` needs a relay)."""

    _child: Process | None
    _ENDED_NOTE = " (socket stdio)"

    def __init__(self, sock: socket.socket, command: Sequence[str] | str, *,
                 loop: Loop | None = None, config: ExecSessionConfig | None = None,
                 shell: bool = False, stderr_sink: Callable[[bytes], None] | None = None,
                 on_done: Callable[[SessionResult], None] | None = None,
                 cwd: str | None = None, env: dict[str, str] | None = None) -> None:
        config = config or ExecSessionConfig(stdio=StdioMode.SOCKET)
        if config.stdio is StdioMode.PIPES:
            raise ValueError("config.stdio is pipes: ExecSession relays those")
        if config.needs_relay is not None:
            raise ValueError(f"{config.needs_relay} needs a relay (ExecSession)")
        super().__init__(sock, command, loop=loop, config=config, shell=shell, on_done=on_done,
                         cwd=cwd, env=env)
        reason = _why_not(self.loop, sock)
        if reason is not None:
            if self._own_loop:
                self.loop.close()
            raise ValueError(f"stdio=socket: {reason}; use stdio=pipes or auto")
        self._hangup: object | None = None  # the loop's watch of the socket while the child runs
        self._closer: Stream | None = None  # reads (and drops) until the client's EOF at the end
        self._closing = False
        self._close_deadline = 0.0
        self._eof_seen = False
        self._fin_sent = False

    # -- the ExecSession interface ----------------------------------------------------------
    @property
    def bytes_from_client(self) -> int:
        """Bytes the connection received from the client so far (``TCP_INFO``)."""
        if self.result is not None:
            return self.result.bytes_from_client
        return tcp_byte_counts(self._sock)[0]

    @property
    def bytes_to_client(self) -> int:
        """Bytes written to the client so far (``TCP_INFO``, ``SIOCOUTQ``)."""
        if self.result is not None:
            return self.result.bytes_to_client
        return tcp_byte_counts(self._sock)[1]

    def start(self) -> None:
        """Spawn the child on the socket. A spawn failure ends the session at once
        (``reason == "spawn-failed"``), with the socket closed."""
        if self._started:
            raise RuntimeError("the session was already started")
        self._started = True
        loop: Any = self.loop
        self._started_at = loop.time()
        try:
            self._sock.setblocking(True)  # the child shares O_NONBLOCK: see the essay
            self._child = loop.spawn_on_socket(self._command, shell=self._shell,
                                               stderr=self.config.stderr,
                                               socket_fd=self._sock.fileno(), cwd=self._cwd,
                                               env=self._env)
        except (OSError, ValueError) as error:
            self._spawn_failed(error)
            return
        child = self._child
        assert child is not None
        child.spawn_failure_handler = self._spawn_failed
        child.failure_handler = self.callback_failed
        self._hangup = loop.watch_hangup(self._sock.fileno(), self._on_hangup)
        child.watch_exit(self._on_exit)
        self._schedule_timeouts()

    def _drop_connection(self) -> None:
        self._forget_hangup()
        try:
            # Ends the connection for the child and the client alike; the fd itself stays
            # open until the spawn is surely over (_finish).
            self._sock.shutdown(socket.SHUT_RDWR)
            self._fin_sent = True
        except OSError:
            pass

    # -- events -------------------------------------------------------------------------------
    def _forget_hangup(self) -> None:
        watch, self._hangup = self._hangup, None
        if watch is not None:
            loop: Any = self.loop  # forget_hangup: loop.py's socket-stdio capability
            loop.forget_hangup(watch)

    def _on_hangup(self) -> None:
        """The socket reports a hang-up or an error while the child runs: the connection is
        over both ways (a reset, usually), and nothing more can pass."""
        self._forget_hangup()  # level-triggered: it would be reported on every wait
        if self._finished or self._aborting is not None:
            return
        self._client_lost(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def _connection_lost(self) -> int | None:
        """``None`` while the connection lives; else its pending error (0: none, it ended both
        ways, ``TCP_CLOSE``). The child may have died of it: a read that failed with
        ``ECONNRESET`` took the error, the state stays. (Reading ``SO_ERROR`` clears it: once.)"""
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            return code
        if _TCP_INFO is not None:
            try:
                if self._sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0] == _TCP_CLOSE:
                    return 0
            except OSError as error:
                return error.errno or 0
        return None

    def _client_lost(self, code: int) -> None:
        log.debug("session pid %s: client lost: %s", self.pid,
                  os.strerror(code) if code else "the connection was closed both ways")
        self.abort("client-disconnected")

    def _child_exited(self) -> None:
        lost = self._connection_lost() if self._hangup is not None else None
        self._forget_hangup()
        if lost is not None:
            # The hang-up came with (and maybe killed) the child: it is the session's end.
            self._client_lost(lost)
            return
        assert self._child is not None
        self._child.kill()  # what it left running goes with it (see the essay)
        try:
            self._sock.shutdown(socket.SHUT_WR)  # FIN after all the child wrote
            self._fin_sent = True
        except OSError:
            pass  # the client is gone already: reading below sees it
        # Read (and drop) until the client's EOF, so that closing does not reset a connection
        # whose last bytes are still in flight.
        self._closing = True
        self._close_deadline = self.loop.time() + self.config.close_timeout
        self._closer = self.loop.socket_stream(self._sock)
        self._closer.failure_handler = self.callback_failed
        self._closer.read(READ_CHUNK, self._on_discard)
        self._schedule_timeouts()

    def _on_discard(self, data: bytes | memoryview, error: BaseException | None) -> None:
        if self._finished or self._aborting is not None:
            return
        if error is not None or not data:
            self._eof_seen = error is None
            self.loop.call_soon(self._finish)
            return
        assert self._closer is not None
        self._closer.read(READ_CHUNK, self._on_discard)

    # -- timeouts -----------------------------------------------------------------------------
    def _schedule_timeouts(self) -> None:
        if self._closing:
            self._reschedule(self._close_deadline - self.loop.time())
        elif self.config.exec_timeout:
            self._reschedule(self._started_at + self.config.exec_timeout - self.loop.time())

    def _on_timer(self) -> None:
        self._timer = None
        if self._finished:
            return
        if self._aborting is not None:
            log.warning("session pid %s: child not reaped after kill", self.pid)
            self._finish()
        elif self._closing:
            self._finish()
        else:
            self.abort("exec-timeout")

    # -- the end ------------------------------------------------------------------------------
    def _finish(self) -> None:
        if self._finished:
            return
        received, sent = tcp_byte_counts(self._sock, eof_seen=self._eof_seen,  # closed below
                                         fin_sent=self._fin_sent)
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Each step is attempted whatever the one before raised, and on_done is always called.
        try:
            self._forget_hangup()
            if self._closer is not None:
                self._closer.close()
        except Exception as error:
            log.error("session pid %s: releasing the connection failed: %s", self.pid,
                      str(error))
        self._release_child()  # waits for a spawn under way: the fd is its stdio till then
        try:
            self._sock.close()
        except OSError:
            pass
        self._report(SessionResult(
            reason=self._aborting or "exited", returncode=self._returncode,
            bytes_from_client=received, bytes_to_client=sent, bytes_stderr=0,
            pauses=0, peak_buffered=0, duration=self.loop.time() - self._started_at,
            error=self._error))

    def __repr__(self) -> str:
        state = "done" if self._finished else "closing" if self._closing else "running"
        return f"<SocketStdioSession pid={self.pid} {state}>"
