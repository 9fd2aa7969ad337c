"""ExecSession: one connected socket relayed to one child process, on a shared loop.

The state machine is the same for every backend; the loop supplies completion-style streams
and the child. Rules it keeps:

* Bytes move through two buffers (client → stdin, stdout → client); a buffer's head is only
  dropped once a write *completed* with that many bytes, so a partial write loses or reorders
  nothing. One read and one write per stream at a time.
* Client EOF: the stdin buffer is drained, then the child's stdin is closed.
  Child stdout (+ stderr) EOF: the output buffer is drained, then the socket is half-closed.
* The session ends when the output is sent and the child has exited (its code is in the
  result). It then waits up to ``close_timeout`` for the client's EOF, discarding what comes,
  so the close is graceful.
* A child that exits while something it started still holds its output: the output is relayed
  for ``drain_timeout`` more seconds, then the tree is killed (the output then ends) — on every
  backend alike.
* A callback of this session that raises (a bug, a failing hook) ends this session only
  (``reason == "internal-error"``, the error in the result); the loop and the other sessions
  go on (:meth:`callback_failed`).
* Client disconnect (reset, or a send that fails), a timeout or :meth:`abort`: the child's tree
  is killed, the socket closed, and the session ends once the child is reaped.
* Every fd, handle and process is released by :meth:`_finish`, on every path.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .backends import open_loop
from .chunks import ChunkQueue
from .config import ExecSessionConfig
from .loop import (
    RELAY_EOF,
    RELAY_ERROR,
    RELAY_FULL,
    RELAY_SMALL,
    Child,
    Loop,
    Process,
    RelayCounters,
    Stream,
    Timer,
)

__all__ = ["ExecSession", "SessionBase", "SessionResult"]

log = logging.getLogger("execsession")
# Log messages get str(error), never the exception: a record that keeps an exception keeps its
# traceback's frames, and with them sessions and loops, alive (log capture holds records).

READ_CHUNK = 256 * 1024
"""Largest single read or write, unless the loop says less (``MAX_IO_SIZE``)."""

EXIT_GRACE = 10.0
"""Seconds to wait for a killed child to be reaped before giving up on its exit code."""
C_RELAY_ENV = "NTAFD_EXEC_C_RELAY"
"""Each idle direction goes to the loop's relay step where the loop has one — C on the IOCP
loop with the speedups (ACTIVE_KB CR7), ``splice`` on the selectors loop on Linux (L10-12);
``0`` in this variable keeps every byte on the Python path."""


@dataclass(frozen=True, slots=True)
class SessionResult:
    """How a session ended.

    ``reason``: ``exited`` (the normal end), ``client-disconnected``, ``exec-timeout``,
    ``connect-timeout``, ``idle-timeout``, ``aborted`` (by :meth:`ExecSession.abort`),
    ``server-shutdown``, ``spawn-failed`` or ``internal-error`` (one of the session's
    callbacks raised: ``error`` says what). ``returncode``: the child's exit code (negative
    signal number on POSIX), ``None`` if it never ran. ``pauses``: how often flow control
    stopped reading a source; ``peak_buffered``: the most bytes held at once (never above
    ``max_buffered``: a read is only issued for the room left). ``largest_buffer``: the
    largest size the stdin or stdout buffer grew to (at most ``max_buffer``);
    ``buffer_grows``, ``buffer_shrinks``: how often a buffer doubled or halved.
    """

    reason: str
    returncode: int | None
    bytes_from_client: int
    bytes_to_client: int
    bytes_stderr: int
    pauses: int
    peak_buffered: int
    duration: float
    error: str | None = None
    largest_buffer: int = 0
    buffer_grows: int = 0
    buffer_shrinks: int = 0


class _Flow:
    """Pause/resume with hysteresis for one source feeding one buffer, and the buffer's size.

    The size starts at the configured one and doubles after a read that got all it asked for
    (the source had more: larger reads mean fewer calls), up to ``limit``; it halves, down to
    the configured size, after a read that completed with the buffer empty (all sent before)
    and brought less than a quarter of it (the stream went quiet: small reads need no big
    buffers). Only the size moves; every read is still sized to the room left under it and
    under ``max_buffered``."""

    __slots__ = ("capacity", "grows", "initial", "largest", "limit", "paused", "pauses",
                 "shrinks")

    def __init__(self, capacity: int, limit: int) -> None:
        self.capacity = self.initial = self.largest = capacity
        self.limit = max(capacity, limit)
        self.paused = False
        self.pauses = 0
        self.grows = self.shrinks = 0

    def resize(self, asked: int, got: int, held: int) -> None:
        """Grow or shrink after a read of ``asked`` bytes brought ``got`` into a buffer
        holding ``held``."""
        if got == asked and self.capacity < self.limit:
            self.capacity = min(self.limit, self.capacity * 2)
            self.largest = max(self.largest, self.capacity)
            self.grows += 1
        elif (not held and got < self.capacity // 4
              and self.capacity > self.initial):
            self.capacity = max(self.initial, self.capacity // 2)
            self.shrinks += 1

    def may_read(self, used: int, total: int, config: ExecSessionConfig) -> bool:
        if self.paused:
            if used <= config.resume_threshold * self.capacity and (
                    used == 0 or total <= config.resume_threshold * config.max_buffered):
                self.paused = False
        elif (used >= config.pause_threshold * self.capacity
              or total >= config.pause_threshold * config.max_buffered):
            self.paused = True
            self.pauses += 1
        return not self.paused


class SessionBase:
    """What every session shares: ``sock`` (connected; the session owns and closes it) and
    ``command`` (an argv list, or a string run by the shell with ``shell=True``) checked, its
    own loop or the caller's, and the life cycle — :meth:`start` (the subclass's), :meth:`run`,
    :meth:`abort`, :meth:`callback_failed`, :meth:`close` — ending in the subclass's
    ``_finish``, which reports ``on_done(result)`` once everything is released."""

    _child: Process | None

    def __init__(self, sock: socket.socket, command: Sequence[str] | str, *,
                 loop: Loop | None, config: ExecSessionConfig, shell: bool,
                 on_done: Callable[[SessionResult], None] | None, cwd: str | None,
                 env: dict[str, str] | None) -> None:
        if isinstance(command, str) and not shell:
            raise TypeError("command: a string needs shell=True; pass an argv list otherwise")
        if not isinstance(command, str) and not command:
            raise ValueError("command: the argv list is empty")
        self._own_loop = loop is None
        self.loop: Loop = loop if loop is not None else open_loop()
        self.config = config
        self._sock = sock
        self._command = command
        self._shell = shell
        self._cwd = cwd
        self._env = env
        self._on_done = on_done
        self.result: SessionResult | None = None
        self._child = None
        self._timer: Timer | None = None
        self._returncode: int | None = None
        self._exited = False
        self._aborting: str | None = None
        self._error: str | None = None
        self._finished = False
        self._started = False
        self._started_at = 0.0

    @property
    def done(self) -> bool:
        return self._finished

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def start(self) -> None:
        raise NotImplementedError

    def run(self, timeout: float | None = None) -> SessionResult | None:
        """Start (if needed) and run the session's own loop until it is done."""
        if not self._started:
            self.start()
        self.loop.run(until=lambda: self._finished, timeout=timeout)
        if self._own_loop and self._finished:
            self.loop.close()
        return self.result

    def abort(self, reason: str = "aborted") -> None:
        """Kill the child's tree and drop the connection; the session ends once it is reaped."""
        if self._finished or self._aborting is not None:
            return
        log.info("session pid %s: %s", self.pid, reason)
        self._aborting = reason
        self._drop_connection()
        if self._child is not None:
            self._child.kill()
        if self._exited:
            self.loop.call_soon(self._finish)
        else:
            self._reschedule(EXIT_GRACE)

    def callback_failed(self, error: BaseException) -> None:
        """The loop's report that one of this session's callbacks (or its streams' or child's)
        raised ``error`` (already logged): end this session — kill the tree, close the
        connection — and nothing else."""
        if self._finished:
            return
        if self._error is None:
            self._error = f"internal error: {type(error).__name__}: {error}"
        if self._child is None:
            self._exited = True  # nothing to wait for
        if self._aborting is None:
            try:
                self.abort("internal-error")
                return
            except Exception as second:
                log.error("session pid %s: aborting failed: %s", self.pid, str(second))
        self._finish()  # already ending (or abort failed): end now

    def close(self, reason: str = "server-shutdown") -> None:
        """End now, without waiting for anything: kill the tree, release everything (the
        child is reaped, waiting at most a second), and report the result."""
        if self._finished:
            return
        if self._aborting is None:
            self._aborting = reason
        self._finish()

    def _spawn_failed(self, error: BaseException) -> None:
        """The child could not be started — at once, or later by a backend that starts it in
        the background: end the session (``spawn-failed``), the connection closed."""
        if self._finished:
            return
        log.warning("cannot start %r: %s", self._command, str(error))
        self._error = f"{type(error).__name__}: {error}"
        if self._aborting is None:
            self._aborting = "spawn-failed"
        self._exited = True
        self.loop.call_soon(self._finish)

    def _reschedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _release_child(self) -> None:
        """(``_finish``) Kill whatever the child left running in its tree and release the child
        (reaped, waiting briefly); each step is attempted whatever the one before raised."""
        if self._child is None:
            return
        try:
            self._child.kill()
        except Exception as error:
            log.error("session pid %s: kill failed: %s", self.pid, str(error))
        try:
            self._child.close()
        except Exception as error:
            log.error("session pid %s: releasing the child failed: %s", self.pid, str(error))

    _ENDED_NOTE = ""
    """Appended to the "ended" log line (what kind of session it was)."""

    def _report(self, result: SessionResult) -> None:
        """(``_finish``) Keep ``result``, log it and hand it to ``on_done`` (once)."""
        self.result = result
        log.info("session pid %s ended: %s, exit code %s, %d bytes in, %d out%s", self.pid,
                 result.reason, result.returncode, result.bytes_from_client,
                 result.bytes_to_client, self._ENDED_NOTE)
        on_done, self._on_done = self._on_done, None  # often a closure over this session
        if on_done is not None:
            on_done(result)

    def _on_exit(self, returncode: int) -> None:
        """The child exited: its code is the session's; an aborting session ends now, a running
        one decides in :meth:`_child_exited`."""
        self._returncode = returncode
        self._exited = True
        log.debug("session pid %s exited with %d", self.pid, returncode)
        if self._aborting is not None:
            self.loop.call_soon(self._finish)
        elif not self._finished:
            self._child_exited()

    # -- the subclass's ---------------------------------------------------------------------
    def _child_exited(self) -> None:
        raise NotImplementedError

    def _drop_connection(self) -> None:
        """(abort) End the connection now, for the client and the child."""
        raise NotImplementedError

    def _on_timer(self) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError


class ExecSession(SessionBase):
    """Relays ``sock`` (connected; the session owns and closes it) to a child running
    ``command`` (an argv list, or a string run by the shell with ``shell=True``).

    Call :meth:`start`; the loop does the rest. ``on_done(result)`` is called once, on the
    loop's thread, when everything is released. ``stderr_sink`` receives the child's stderr in
    ``separate`` mode (default: dropped). Without ``loop`` the session makes its own: call
    :meth:`run`.
    """

    _child: Child | None

    def __init__(self, sock: socket.socket, command: Sequence[str] | str, *,
                 loop: Loop | None = None, config: ExecSessionConfig | None = None,
                 shell: bool = False, stderr_sink: Callable[[bytes], None] | None = None,
                 on_done: Callable[[SessionResult], None] | None = None,
                 cwd: str | None = None, env: dict[str, str] | None = None) -> None:
        super().__init__(sock, command, loop=loop, config=config or ExecSessionConfig(),
                         shell=shell, on_done=on_done, cwd=cwd, env=env)
        self._stderr_sink = stderr_sink

        self._client: Stream | None = None
        # The reads' chunks as they came, written out as they are (no copy per chunk:
        # execsession.chunks says why).
        self._to_child = ChunkQueue()
        self._to_client = ChunkQueue()
        self._reserved_child = 0  # bytes a pending socket read may still add to _to_child
        self._reserved_client = 0
        # A buffer grows only while the other, at its configured size, still fits beside it
        # under max_buffered: one direction stuck full never takes the other's last room.
        config = self.config
        self._in_flow = _Flow(config.stdin_buffer, min(
            config.max_buffer, config.max_buffered - config.stdout_buffer))
        self._out_flow = _Flow(config.stdout_buffer, min(
            config.max_buffer, config.max_buffered - config.stdin_buffer))
        self._reading_client = self._reading_out = self._reading_err = False
        self._writing_child = self._writing_client = False
        # Bytes handed to a write that has not completed: still held (they count against the
        # hard limits), but not "waiting", so they do not keep a reader paused. A write takes
        # at most half a buffer when writes complete later (overlapped I/O), so the next read
        # can proceed while it is in flight.
        self._inflight_child = self._inflight_client = 0
        self._share = 2 if self.loop.WRITES_COMPLETE_LATER else 1
        # A backend may cap single reads and writes below READ_CHUNK (POSIX: see
        # posix_backend.MAX_IO_SIZE); buffers still grow, only each call stays small.
        self._io_chunk = min(READ_CHUNK, getattr(self.loop, "MAX_IO_SIZE", READ_CHUNK))
        self._client_eof = self._out_eof = self._err_eof = False
        self._stdin_closed = self._stdin_broken = self._shut_wr = False
        self._closing = False  # output sent, child gone: waiting for the client's EOF
        self._drain_deadline: float | None = None  # child gone, its output still open
        self._tree_killed = False
        self._last_activity = 0.0
        self._active = False
        self._close_deadline = 0.0
        self._bytes_in = self._bytes_out = self._bytes_err = 0
        self._peak = 0
        # Directions handed to the loop's relay step (None: Python relays it). While one
        # runs, its read and write flags stay set, so that the pump leaves it alone.
        self._c_relay = (os.environ.get(C_RELAY_ENV, "1") != "0"
                         and getattr(self.loop, "relay", None) is not None)
        self._relay_in: object | None = None
        self._relay_out: object | None = None
        self._relay_seen = 0  # the relays' request counts when the timer last looked
        self._relay_in_size = self._relay_out_size = 0

    # -- life cycle ----------------------------------------------------------------------------
    @property
    def bytes_from_client(self) -> int:
        """Bytes of the client's relayed to the child so far (a running relay's included)."""
        relay: Any = self._relay_in
        return self._bytes_in + (relay.info().written if relay is not None else 0)

    @property
    def bytes_to_client(self) -> int:
        """Bytes of the child's output relayed to the client so far (a running relay's
        included)."""
        relay: Any = self._relay_out
        return self._bytes_out + (relay.info().written if relay is not None else 0)

    def start(self) -> None:
        """Spawn the child and start relaying. A spawn failure ends the session at once
        (``reason == "spawn-failed"``), with the socket closed."""
        if self._started:
            raise RuntimeError("the session was already started")
        self._started = True
        loop = self.loop
        self._started_at = self._last_activity = loop.time()
        config = self.config
        try:
            self._client = loop.socket_stream(self._sock)
            self._child = loop.spawn(self._command, shell=self._shell, stderr=config.stderr,
                                     pipe_sizes=(config.stdin_buffer, config.stdout_buffer,
                                                 config.stderr_buffer),
                                     cwd=self._cwd, env=self._env)
        except (OSError, ValueError) as error:
            self._spawn_failed(error)
            return
        self._child.spawn_failure_handler = self._spawn_failed
        log.debug("session started: pid %s", self._child.pid)
        # A failing callback of any of these (or of this session) ends this session only.
        for part in (self._client, self._child, self._child.stdin, self._child.stdout,
                     self._child.stderr):
            if part is not None:
                part.failure_handler = self.callback_failed
        if self._child.stderr is None:
            self._err_eof = True
        self._child.watch_exit(self._on_exit)
        self._schedule_timeouts()
        self._pump()

    def _drop_connection(self) -> None:
        self._release_relays()
        self._close_client()

    # -- the pump: decide what to read and write next ---------------------------------------
    def _pump(self) -> None:
        if self._finished or self._aborting is not None:
            return
        config = self.config
        client = self._client
        child = self._child
        assert client is not None and child is not None
        if self._c_relay:
            self._hand_to_c(client, child)
        # Every byte held or reserved for a pending read (max_buffered bounds it).
        total = (self._to_child.size + self._to_client.size + self._reserved_child
                 + self._reserved_client)
        inflight = self._inflight_child + self._inflight_client

        # client -> child stdin. A read whose bytes were there at once (read_at_once: they
        # come on the next turn) holds back the write of a queue smaller than one write, so
        # that the two go out as one (fewer calls per MiB; the next turn writes in any case).
        more_in = more_out = False
        if not self._reading_client and not self._client_eof:
            if self._stdin_closed or self._stdin_broken or self._closing:
                self._reading_client = True  # nobody will read it: drain to see EOF or reset
                client.read(READ_CHUNK, self._on_client_discard)
            else:
                used = self._to_child.size + self._reserved_child
                if self._in_flow.may_read(used - self._inflight_child, total - inflight, config):
                    size = min(self._io_chunk, self._in_flow.capacity - used,
                               config.max_buffered - total)
                    if size > 0:
                        self._reading_client = True
                        self._reserved_child = size
                        total += size
                        client.read(size, self._on_client_data)
                        more_in = client.read_at_once
        if self._to_child.size and not self._writing_child and not self._stdin_closed:
            limit = self._write_chunk(self._in_flow)
            if not (more_in and self._to_child.size < limit):
                self._writing_child = True
                chunk = self._to_child.peek(limit)
                self._inflight_child = len(chunk)
                child.stdin.write_chunk(chunk, self._on_stdin_written)
        elif (self._client_eof and not self._to_child.size and not self._writing_child
              and not self._stdin_closed):
            self._stdin_closed = True
            child.stdin.shutdown_write()

        # child stdout -> client
        if not self._reading_out and not self._out_eof:
            used = self._to_client.size + self._reserved_client
            inflight = self._inflight_child + self._inflight_client
            if self._out_flow.may_read(used - self._inflight_client, total - inflight, config):
                size = min(self._io_chunk, self._out_flow.capacity - used,
                           config.max_buffered - total)
                if size > 0:
                    self._reading_out = True
                    self._reserved_client = size
                    child.stdout.read(size, self._on_stdout_data)
                    more_out = child.stdout.read_at_once
        if (not self._reading_err and not self._err_eof and child.stderr is not None):
            self._reading_err = True
            child.stderr.read(config.stderr_buffer, self._on_stderr_data)
        if self._to_client.size and not self._writing_client and not self._shut_wr:
            limit = self._write_chunk(self._out_flow)
            if not (more_out and self._to_client.size < limit):
                self._writing_client = True
                chunk = self._to_client.peek(limit)
                self._inflight_client = len(chunk)
                client.write_chunk(chunk, self._on_client_written)
        elif (self._out_eof and self._err_eof and not self._to_client.size
              and not self._writing_client and not self._shut_wr):
            self._shut_wr = True
            client.shutdown_write()

        held = self._to_child.size + self._to_client.size
        if held > self._peak:
            self._peak = held
        if self._shut_wr and self._exited:
            if self._client_eof:
                self.loop.call_soon(self._finish)
            elif not self._closing:
                # Output sent, child gone: read (and drop) until the client's EOF, so that
                # closing does not reset a connection whose last bytes are still in flight.
                self._closing = True
                self._close_deadline = self.loop.time() + config.close_timeout
                self._schedule_timeouts()
                self.loop.call_soon(self._pump)

    def _write_chunk(self, flow: _Flow) -> int:
        """A write takes at most half the buffer when writes complete later (overlapped I/O),
        so that the next read can proceed while it is in flight."""
        return max(1, min(self._io_chunk, flow.capacity // self._share))

    # -- the relay step off Python (where the loop has one; C_RELAY_ENV=0 turns it off) -------
    def _hand_to_c(self, client: Stream, child: Child) -> None:
        """Hand each direction that is idle (nothing queued, reserved or in flight, no end
        seen) to the loop's relay step (C, or splice); its event gives it back
        (``_on_relay_*``)."""
        relay = getattr(self.loop, "relay", None)
        assert relay is not None
        # A relay holds at most its buffer: sized so that it and the other direction at its
        # largest (its buffer's capacity, in C or in Python) stay within max_buffered.
        limit = self.config.max_buffered
        in_size = min(self._in_flow.capacity, limit - self._out_flow.capacity)
        out_size = min(self._out_flow.capacity, limit - self._in_flow.capacity)
        if (self._relay_in is None and in_size > 0 and not self._reading_client
                and not self._writing_child and not self._to_child.size
                and not self._reserved_child and not self._client_eof
                and not self._stdin_closed and not self._stdin_broken and not self._closing):
            self._relay_in = relay(client, child.stdin, in_size, self._on_relay_in,
                                   give_full=True, give_small=self._small(self._in_flow))
            self._relay_in_size = in_size
            if self._relay_in is not None:
                self._reading_client = self._writing_child = True
                self._peak = max(self._peak, in_size + self._to_client.size)
        if (self._relay_out is None and out_size > 0 and not self._reading_out
                and not self._writing_client and not self._to_client.size
                and not self._reserved_client and not self._out_eof and not self._shut_wr):
            self._relay_out = relay(child.stdout, client, out_size, self._on_relay_out,
                                    give_full=True, give_small=self._small(self._out_flow))
            self._relay_out_size = out_size
            if self._relay_out is not None:
                self._reading_out = self._writing_client = True
                self._peak = max(self._peak, out_size + self._to_child.size)

    @staticmethod
    def _small(flow: _Flow) -> int:
        """Reads below this size come back to Python: a grown buffer may shrink after one
        (_Flow.resize); at the configured size no read needs Python."""
        return flow.capacity // 4 if flow.capacity > flow.initial else 0

    def _release_relays(self) -> None:
        """Take both directions back from the relays at once (C cancels their requests and frees
        them once it saw the completions): the session is ending."""
        release = getattr(self.loop, "release_relay", None)
        for name in ("_relay_in", "_relay_out"):
            relay = getattr(self, name)
            if relay is not None and release is not None:
                setattr(self, name, None)
                release(relay)

    def _relay_activity(self) -> None:
        """The timer's look at the running relays: requests completed since the last look
        count as activity (idle and connect timeouts)."""
        seen = 0
        for relay in (self._relay_in, self._relay_out):
            if relay is not None:
                info = relay.info()  # type: ignore[attr-defined]
                seen += info.inline + info.dequeued
        if seen != self._relay_seen:
            self._relay_seen = seen
            self._activity()

    def _relay_back(self, name: str) -> None:
        relay = getattr(self, name)
        setattr(self, name, None)
        self._relay_seen = 0
        release = getattr(self.loop, "release_relay", None)
        if relay is not None and release is not None:
            release(relay)

    def _on_relay_in(self, event: int, info: RelayCounters, held: bytes) -> None:
        """client -> child stdin came back from the relay: its counts, the bytes it held, its
        end."""
        self._relay_back("_relay_in")
        self._reading_client = self._writing_child = False
        if self._aborting is not None or self._finished:
            return
        self._bytes_in += info.written + len(held)
        if info.written or held:
            self._activity()
        if held:
            if event in (RELAY_FULL, RELAY_SMALL):  # the buffer may grow or shrink
                self._in_flow.resize(self._relay_in_size, len(held), 0)
            self._to_child.append(held)
        if event == RELAY_EOF:
            self._client_eof = True
        elif event == RELAY_ERROR:
            error = self.loop.relay_error(info.status)
            if info.failed_write:
                log.debug("session pid %s: child stdin closed: %s", self.pid, str(error))
                self._stdin_broken = True
                self._to_child.clear()
            else:
                self._client_lost(error)
                return
        self._pump()

    def _on_relay_out(self, event: int, info: RelayCounters, held: bytes) -> None:
        """child stdout -> client came back from the relay."""
        self._relay_back("_relay_out")
        self._reading_out = self._writing_client = False
        if self._aborting is not None or self._finished:
            return
        self._bytes_out += info.written
        if info.written or held:
            self._activity()
        if held:
            if event in (RELAY_FULL, RELAY_SMALL):
                self._out_flow.resize(self._relay_out_size, len(held), 0)
            self._to_client.append(held)
        if event == RELAY_ERROR and info.failed_write:
            self._client_lost(self.loop.relay_error(info.status))
            return
        if event in (RELAY_EOF, RELAY_ERROR):
            if event == RELAY_ERROR:
                log.debug("session pid %s: stdout read failed: %s", self.pid,
                          str(self.loop.relay_error(info.status)))
            self._out_eof = True
            assert self._child is not None
            self._child.expect_exit()
        self._pump()

    # -- completions --------------------------------------------------------------------------
    def _activity(self) -> None:
        self._last_activity = self.loop.time()
        self._active = True

    def _on_client_data(self, data: bytes | memoryview, error: BaseException | None) -> None:
        self._reading_client = False
        asked, self._reserved_child = self._reserved_child, 0
        if self._aborting is not None or self._finished:
            return
        if error is not None:
            self._client_lost(error)
            return
        if not data:
            self._client_eof = True
        else:
            self._bytes_in += len(data)
            self._activity()
            if self._stdin_broken or self._stdin_closed:
                pass  # the child stopped reading: the bytes have nowhere to go
            else:
                self._in_flow.resize(asked, len(data), self._to_child.size)
                self._to_child.append(data)
        self._pump()

    def _on_client_discard(self, data: bytes | memoryview, error: BaseException | None) -> None:
        self._reading_client = False
        if self._aborting is not None or self._finished:
            return
        if error is not None:
            if self._closing:
                self.loop.call_soon(self._finish)
            else:
                self._client_lost(error)
            return
        if not data:
            self._client_eof = True
            if self._closing:
                self.loop.call_soon(self._finish)
                return
        else:
            self._bytes_in += len(data)
        self._pump()

    def _on_stdin_written(self, count: int, error: BaseException | None) -> None:
        self._writing_child = False
        self._inflight_child = 0
        if self._aborting is not None or self._finished:
            return
        if error is not None:
            # The child closed its stdin (or exited): what it did not take is dropped, and the
            # client is still read, so that its EOF or disconnect is seen.
            log.debug("session pid %s: child stdin closed: %s", self.pid, str(error))
            self._stdin_broken = True
            self._to_child.clear()
        else:
            self._to_child.consume(count)
            self._activity()
            if not self._to_child.size and self._reading_client and self._reading_out:
                # Nothing for the pump to do (a round trip's common case): no bytes left to
                # write; both reads are in flight, so neither needs the room this freed; the
                # child's stdin is not to be shut (the client's EOF is not seen while a read
                # of it is in flight), and nothing on the client side changed.
                return
        self._pump()

    def _on_stdout_data(self, data: bytes | memoryview, error: BaseException | None) -> None:
        self._reading_out = False
        asked, self._reserved_client = self._reserved_client, 0
        if self._aborting is not None or self._finished:
            return
        if error is not None or not data:
            if error is not None:
                log.debug("session pid %s: stdout read failed: %s", self.pid, str(error))
            self._out_eof = True
            assert self._child is not None
            self._child.expect_exit()
        else:
            self._out_flow.resize(asked, len(data), self._to_client.size)
            self._to_client.append(data)
            self._activity()
        self._pump()

    def _on_stderr_data(self, data: bytes | memoryview, error: BaseException | None) -> None:
        self._reading_err = False
        if self._aborting is not None or self._finished:
            return
        if error is not None or not data:
            self._err_eof = True
        else:
            self._bytes_err += len(data)
            self._activity()
            if self._stderr_sink is not None:
                try:
                    self._stderr_sink(bytes(data))
                except Exception:  # a broken sink must not break the relay
                    log.exception("stderr sink failed; dropping the child's stderr")
                    self._stderr_sink = None
        self._pump()

    def _on_client_written(self, count: int, error: BaseException | None) -> None:
        self._writing_client = False
        self._inflight_client = 0
        if self._aborting is not None or self._finished:
            return
        if error is not None:
            self._client_lost(error)
            return
        self._to_client.consume(count)
        self._bytes_out += count
        self._activity()
        if not self._to_client.size and self._reading_out and self._reading_client:
            return  # nothing for the pump to do: as in _on_stdin_written
        self._pump()

    def _child_exited(self) -> None:
        if not (self._out_eof and self._err_eof):
            # Something the child started still holds its output: relay it for drain_timeout
            # more seconds, then kill the tree (its output then ends).
            if self.config.drain_timeout:
                self._drain_deadline = self.loop.time() + self.config.drain_timeout
                self._schedule_timeouts()
            else:
                self._kill_tree()
        self._pump()

    def _kill_tree(self) -> None:
        self._drain_deadline = None
        if not self._tree_killed and self._child is not None:
            self._tree_killed = True
            # Harmless if only unread bytes kept the output open: they stay in the pipe.
            log.info("session pid %s: the child exited and its output is still open: killing "
                     "what is left of its tree", self.pid)
            self._child.kill()

    def _client_lost(self, error: BaseException) -> None:
        log.debug("session pid %s: client lost: %s", self.pid, str(error))
        self.abort("client-disconnected")

    # -- timeouts -----------------------------------------------------------------------------
    def _deadlines(self) -> list[tuple[float, str]]:
        config = self.config
        if self._closing:  # the child has exited and its output was sent: only closing is left
            return [(self._close_deadline, "close")]
        deadlines: list[tuple[float, str]] = []
        if self._drain_deadline is not None:
            deadlines.append((self._drain_deadline, "drain"))
        if config.exec_timeout:
            deadlines.append((self._started_at + config.exec_timeout, "exec-timeout"))
        if config.connect_timeout and not self._active:
            deadlines.append((self._started_at + config.connect_timeout, "connect-timeout"))
        if config.idle_timeout:
            deadlines.append((self._last_activity + config.idle_timeout, "idle-timeout"))
        return deadlines

    def _schedule_timeouts(self) -> None:
        deadlines = self._deadlines()
        if deadlines:
            self._reschedule(min(deadlines)[0] - self.loop.time())

    def _on_timer(self) -> None:
        self._timer = None
        if self._finished:
            return
        now = self.loop.time()
        if self._relay_in is not None or self._relay_out is not None:
            self._relay_activity()
        if self._aborting is not None:
            # The killed child was not reaped in EXIT_GRACE seconds: give up waiting.
            log.warning("session pid %s: child not reaped after kill", self.pid)
            self._finish()
            return
        for deadline, reason in sorted(self._deadlines()):
            if deadline <= now:
                if reason == "close":
                    self._finish()
                elif reason == "drain":
                    self._kill_tree()
                    self._schedule_timeouts()
                else:
                    self.abort(reason)
                return
        self._schedule_timeouts()

    # -- the end ------------------------------------------------------------------------------
    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
        try:
            self._sock.close()
        except OSError:
            pass

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release_relays()  # before the streams close: their requests are cancelled first
        # Each step is attempted whatever the one before raised, and on_done is always called:
        # a session that never reported its end would keep its server open forever.
        try:
            self._close_client()
        except Exception as error:
            log.error("session pid %s: closing the connection failed: %s", self.pid, str(error))
        self._release_child()
        self._report(SessionResult(
            reason=self._aborting or "exited",
            returncode=self._returncode,
            bytes_from_client=self._bytes_in,
            bytes_to_client=self._bytes_out,
            bytes_stderr=self._bytes_err,
            pauses=self._in_flow.pauses + self._out_flow.pauses,
            peak_buffered=self._peak,
            duration=self.loop.time() - self._started_at,
            error=self._error,
            largest_buffer=max(self._in_flow.largest, self._out_flow.largest),
            buffer_grows=self._in_flow.grows + self._out_flow.grows,
            buffer_shrinks=self._in_flow.shrinks + self._out_flow.shrinks,
        ))
