"""The selectors backend (POSIX): non-blocking pipes and sockets, readiness turned into
completions, children in their own session so the whole tree can be killed.

Exit detection: a pidfd (Linux ≥ 5.3) becomes readable when the child exits, *before* it is
reaped; without pidfds the child is polled. Either way its exit code is read with
``waitid(WNOWAIT)``, which leaves it a zombie: the zombie keeps its pid — and so its process
group id — reserved, so the group can still be killed safely (whatever the child left running,
when the session decides: see ``drain_timeout``), and the child is reaped only after that, in
:meth:`_PosixChild.close`. No pid-reuse race: ``killpg`` never names a group that is not ours.

Children are started on spawner threads (:mod:`execsession.posix_spawn`: glibc's
``posix_spawnp`` through ctypes, the GIL released), so a spawn — mostly the kernel copying and
closing the descriptors of every other live session — neither stops the loop nor waits for the
spawns before it. The child's pipes exist at once: the session relays the client's bytes into
its stdin meanwhile, and its output is read once the loop took the process over.

A server that is SIGKILLed kills nothing itself: each loop's guardian process
(:mod:`execsession.posix_guardian`) is told each child's group when it starts and when it was
killed (before the reap), and kills every group still registered once the server is gone.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - open_loop() refuses first
    raise ImportError("execsession.posix_backend needs POSIX pipes; use the iocp backend")

import errno
import logging
import os
import select
import selectors
import signal
import socket
from collections.abc import Callable, Sequence

from . import posix_relay, posix_spawn
from .config import StderrMode
from .loop import Child, Loop, Process, ReadCallback, RelayCallback, Stream, WriteCallback
from .posix_guardian import GroupGuardian

__all__ = ["SelectorLoop"]

log = logging.getLogger("execsession.loop")

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
HAVE_EPOLL = hasattr(select, "epoll")
if HAVE_EPOLL:
    # As the selectors module reads epoll's events: a hang-up or error wakes both sides.
    _EPOLL_MASK = {0: 0, EVENT_READ: select.EPOLLIN, EVENT_WRITE: select.EPOLLOUT,
                   EVENT_READ | EVENT_WRITE: select.EPOLLIN | select.EPOLLOUT}
    _READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
    _WRITABLE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
    _HANGUP = select.EPOLLHUP | select.EPOLLERR
WATCH_HANGUP = 4
"""A watch's mask bit for :meth:`SelectorLoop.watch_hangup`: registered with no event asked,
epoll still reports ``EPOLLHUP`` and ``EPOLLERR`` (epoll_ctl(2)), and reads nothing."""
POLL_MIN = 0.002
POLL_MAX = 0.1


class _Watch:
    """One fd's interest in the selector; applied lazily before each wait, so a read that
    completes and is re-issued within one iteration costs no ``epoll_ctl``."""

    __slots__ = ("closed", "fd", "hangup", "mask", "reader", "writer")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.reader: Callable[[], None] | None = None
        self.writer: Callable[[], None] | None = None
        self.hangup: Callable[[], None] | None = None  # epoll only: see watch_hangup
        self.mask = 0
        self.closed = False


class SelectorLoop(Loop):
    """:class:`Loop` on epoll where there is one (Linux), else ``selectors.DefaultSelector``.

    epoll is used directly: the selectors module's wrapper (a key object per fd, a lookup and
    a tuple per event) was a sizeable part of a 64-byte round trip's Python time (ACTIVE_KB
    B9)."""

    backend = "selectors"
    SPAWNER_THREADS = 4
    """Threads starting children at once (a spawn is mostly the kernel's work, off the GIL).
    1,000 sessions on this 2-core machine, 5 alternated rounds: 4 threads beat 2 in each
    (1.01-1.64x); 8 beat 4 in 2 rounds of 2 (1.10-1.23x), left for another measurement
    (ACTIVE_KB L10-9)."""
    MAX_IO_SIZE = 64 * 1024
    """Largest single read or write the session issues here. A Linux pipe holds 64 KiB, and
    larger reads measured slower: a 256 KiB ``bytes`` is above glibc's mmap threshold, so
    each read maps and page-faults fresh memory (128 MiB through ``cat``: 109-133 MiB/s
    with grown buffers read 256 KiB at a time, 232-334 read 64 KiB at a time, 244-326
    before buffers grew; ACTIVE_KB B2)."""

    def __init__(self) -> None:
        super().__init__()
        self._epoll = select.epoll() if HAVE_EPOLL else None
        self._selector = None if HAVE_EPOLL else selectors.DefaultSelector()
        self._watches: dict[int, _Watch] = {}  # fd -> watch, with epoll
        self._dirty: dict[_Watch, None] = {}
        self._acceptors: dict[int, _Watch] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_watch = _Watch(self._wake_r.fileno())
        self._wake_watch.reader = self._drain_wakeups
        self._changed(self._wake_watch)
        self._guardian: GroupGuardian | None = None
        self._spawner: posix_spawn.Spawner | None = None

    @property
    def spawner(self) -> posix_spawn.Spawner:
        """The threads that start this loop's children (started with the first child; each
        ends when idle, all are joined by :meth:`close`)."""
        if self._spawner is None:
            self._spawner = posix_spawn.Spawner(self.SPAWNER_THREADS)
        return self._spawner

    @property
    def guardian(self) -> GroupGuardian:
        """The process-group guardian of this loop's children (its process starts with the
        first child): it kills their groups if this process dies without doing so."""
        if self._guardian is None:
            self._guardian = GroupGuardian()
        return self._guardian

    # -- interest ------------------------------------------------------------------------------
    def _changed(self, watch: _Watch) -> None:
        self._dirty[watch] = None

    def _forget(self, watch: _Watch) -> None:
        """Unregister now: the fd may be closed (and its number reused) right after."""
        watch.closed = True
        watch.reader = watch.writer = watch.hangup = None
        self._dirty.pop(watch, None)
        if watch.mask:
            self._unregister(watch)
            watch.mask = 0

    def _unregister(self, watch: _Watch) -> None:
        if self._epoll is not None:
            self._epoll.unregister(watch.fd)
            del self._watches[watch.fd]
        else:
            assert self._selector is not None
            self._selector.unregister(watch.fd)

    def _apply(self) -> None:
        dirty, self._dirty = self._dirty, {}
        epoll, selector = self._epoll, self._selector
        for watch in dirty:
            mask = ((EVENT_READ if watch.reader else 0) | (EVENT_WRITE if watch.writer else 0)
                    | (WATCH_HANGUP if watch.hangup else 0))
            if mask == watch.mask:
                continue
            if not mask:
                self._unregister(watch)
            elif epoll is not None:
                if not watch.mask:
                    epoll.register(watch.fd, _EPOLL_MASK[mask & ~WATCH_HANGUP])
                    self._watches[watch.fd] = watch
                else:
                    epoll.modify(watch.fd, _EPOLL_MASK[mask & ~WATCH_HANGUP])
            else:
                assert selector is not None
                if not watch.mask:
                    selector.register(watch.fd, mask, watch)
                else:
                    selector.modify(watch.fd, mask, watch)
            watch.mask = mask

    def _wait(self, timeout: float | None) -> None:
        self._apply()
        # Readiness is level-triggered: events left undispatched by an asynchronous exception
        # (Ctrl-C) are reported again by the next poll. Each callback runs isolated: an
        # exception ends that callback's owner only.
        if self._epoll is not None:
            watches = self._watches
            # Watches are looked up before any callback runs: one may close an fd and another
            # reuse its number, and the old fd's event must not reach the new watch.
            for watch, events in [(watches.get(fd), events) for fd, events
                                  in self._epoll.poll(-1 if timeout is None else timeout)]:
                if watch is None or watch.closed:
                    continue
                # _run_isolated() written out: a frame less per event.
                callback = watch.reader
                if events & _READABLE and callback is not None:
                    try:
                        callback()
                    except Exception as error:
                        self._callback_failed(callback, error)
                callback = watch.writer
                if events & _WRITABLE and callback is not None and not watch.closed:
                    try:
                        callback()
                    except Exception as error:
                        self._callback_failed(callback, error)
                callback = watch.hangup
                if events & _HANGUP and callback is not None and not watch.closed:
                    try:
                        callback()
                    except Exception as error:
                        self._callback_failed(callback, error)
            return
        assert self._selector is not None
        for key, mask in self._selector.select(timeout):
            watch = key.data
            if watch.closed:
                continue
            if mask & EVENT_READ and watch.reader is not None:
                self._run_isolated(watch.reader)
            if mask & EVENT_WRITE and watch.writer is not None and not watch.closed:
                self._run_isolated(watch.writer)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _wakeup(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (buffer full), or closing

    # -- relays (execsession.loop; ACTIVE_KB L10-12) --------------------------------------------
    def relay(self, src: Stream, dst: Stream, size: int, on_event: RelayCallback, *,
              give_full: bool = False, give_small: int = 0
              ) -> posix_relay.SpliceRelay | None:
        """Relay ``src`` -> ``dst`` with ``splice`` (``None`` where there is none, or without a
        pipe on one side: the session relays in Python) until end of data or an error, then
        ``on_event`` once. ``give_full``/``give_small`` do not apply: splice holds no bytes."""
        if (not posix_relay.available() or not isinstance(src, _FdStream)
                or not isinstance(dst, _FdStream) or src.is_socket == dst.is_socket):
            return None
        return posix_relay.SpliceRelay(src, dst, size, on_event)

    def release_relay(self, relay: posix_relay.SpliceRelay) -> None:
        """Take the direction back (no event follows)."""
        relay.close()

    # -- factories -----------------------------------------------------------------------------
    def socket_stream(self, sock: socket.socket) -> Stream:
        sock.setblocking(False)
        return _FdStream(self, sock.fileno(), sock=sock)

    def spawn(self, command: Sequence[str] | str, *, shell: bool, stderr: StderrMode,
              pipe_sizes: tuple[int, int, int], cwd: str | None = None,
              env: dict[str, str] | None = None) -> Child:
        if self._closed:  # before any process starts: its guardian is gone
            raise RuntimeError("spawn on a closed loop")
        return _PosixChild(self, command, shell=shell, stderr=stderr, cwd=cwd, env=env)

    # -- the socket as the child's stdio (execsession.socket_stdio) --------------------------
    SOCKET_STDIO = HAVE_EPOLL
    """Whether :meth:`spawn_on_socket` and :meth:`watch_hangup` are here (they need epoll)."""

    def spawn_on_socket(self, command: Sequence[str] | str, *, shell: bool, stderr: StderrMode,
                        socket_fd: int, cwd: str | None = None,
                        env: dict[str, str] | None = None) -> Process:
        """Start ``command`` with ``socket_fd`` as its stdin and stdout, and as its stderr in
        ``merge`` mode (``discard``: ``/dev/null``; ``separate`` needs pipes). The fd stays
        the caller's, and must stay open until the process's :meth:`Process.close`: the spawn
        runs on a spawner thread. It must be in blocking mode: the child shares the open file,
        ``O_NONBLOCK`` included."""
        if self._closed:
            raise RuntimeError("spawn on a closed loop")
        if not self.SOCKET_STDIO:
            raise OSError(errno.ENOTSUP, "the child's stdio on the socket needs epoll here")
        if stderr is StderrMode.SEPARATE:
            raise ValueError("stderr=separate needs a pipe of its own: relay the session")
        # The guardian holds a copy of the socket from before the spawn: a server SIGKILLed
        # before the child's group is registered still cuts the child's connection.
        return _PosixProcess(self, command, shell=shell,
                             stdio=(socket_fd, socket_fd,
                                    socket_fd if stderr is StderrMode.MERGE else None),
                             theirs=[], cwd=cwd, env=env, held_socket=socket_fd)

    def watch_hangup(self, fd: int, callback: Callable[[], None]) -> _Watch:
        """Call ``callback()`` whenever ``fd`` reports a hang-up or an error (level-triggered:
        until :meth:`forget_hangup`); nothing is read from it."""
        if not self.SOCKET_STDIO:
            raise OSError(errno.ENOTSUP, "watching a hang-up needs epoll")
        watch = _Watch(fd)
        watch.hangup = callback
        self._changed(watch)
        return watch

    def forget_hangup(self, watch: _Watch) -> None:
        """Stop :meth:`watch_hangup`'s watch now (the fd may be closed right after)."""
        self._forget(watch)

    def add_acceptor(self, listener: socket.socket, callback: Callable[[], None]) -> None:
        listener.setblocking(False)
        watch = _Watch(listener.fileno())
        watch.reader = callback
        self._acceptors[listener.fileno()] = watch
        self._changed(watch)

    def remove_acceptor(self, listener: socket.socket) -> None:
        watch = self._acceptors.pop(listener.fileno(), None)
        if watch is not None:
            self._forget(watch)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if self._spawner is not None:
            self._spawner.close()  # before the guardian: a spawn under way registers with it
        if self._guardian is not None:
            self._guardian.close()  # it kills what is still registered (a child not closed)
        if self._epoll is not None:
            self._epoll.close()
        if self._selector is not None:
            self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


class _FdStream(Stream):
    """A non-blocking socket or pipe fd. Writes are tried at once (they usually succeed);
    reads wait for readiness, except right after a read that filled its buffer (more data is
    likely waiting, and a failed try costs less than a wait)."""

    __slots__ = ("_eager", "_fd", "_held", "_loop", "_owns", "_read_cb", "_read_size", "_sock",
                 "_watch", "_write_cb", "_write_data")

    def __init__(self, loop: SelectorLoop, fd: int, *, sock: socket.socket | None = None,
                 owns: bool = False, held: bool = False) -> None:
        self._loop = loop
        self._held = held  # reads wait for release() (a child's output, until it is guarded)
        self._fd = fd
        self._sock = sock
        self._owns = owns
        self._watch = _Watch(fd)
        self._read_cb: ReadCallback | None = None
        self._read_size = 0
        self._write_cb: WriteCallback | None = None
        self._write_data: bytes | memoryview = b""
        self._eager = False

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def is_socket(self) -> bool:
        return self._sock is not None

    def watch_readable(self, callback: Callable[[], None] | None) -> None:
        """A relay's readiness callback for reading (``None``: stop). A held stream (a child's
        output not yet guarded) starts watching at :meth:`release`."""
        if not self._watch.closed:
            self._watch.reader = callback
            if not self._held:
                self._loop._changed(self._watch)

    def watch_writable(self, callback: Callable[[], None] | None) -> None:
        """A relay's readiness callback for writing (``None``: stop)."""
        if not self._watch.closed:
            self._watch.writer = callback
            self._loop._changed(self._watch)

    def _read_now(self, size: int) -> bytes:
        if self._sock is not None:
            return self._sock.recv(size)
        return os.read(self._fd, size)

    def _write_now(self, data: bytes | memoryview) -> int:
        if self._sock is not None:
            return self._sock.send(data)
        return os.write(self._fd, data)

    # -- reading -------------------------------------------------------------------------------
    def read(self, size: int, callback: ReadCallback) -> None:
        if self._watch.closed:
            raise ValueError("read on a closed stream")
        if self._eager:
            try:
                data = self._read_now(size)
            except BlockingIOError:
                pass
            except OSError as error:
                self._loop.call_soon(self._deliver_read, callback, b"", error)
                return
            else:
                self._eager = len(data) == size
                self._loop.call_soon(self._deliver_read, callback, data, None)
                return
        self._read_cb = callback
        self._read_size = size
        self._watch.reader = self._on_readable
        if not self._held:
            self._loop._changed(self._watch)

    def release(self) -> None:
        """Let reads proceed (a read asked for meanwhile starts waiting now)."""
        if self._held:
            self._held = False
            if self._watch.reader is not None:
                self._loop._changed(self._watch)

    def _deliver_read(self, callback: ReadCallback, data: bytes,
                      error: BaseException | None) -> None:
        if not self._watch.closed:
            callback(data, error)

    def _on_readable(self) -> None:
        callback = self._read_cb
        assert callback is not None
        error: OSError | None = None
        sock = self._sock
        try:  # _read_now() written out: this is the path of every read that waited
            data = (sock.recv(self._read_size) if sock is not None
                    else os.read(self._fd, self._read_size))
        except BlockingIOError:
            return  # spurious: stay armed
        except OSError as failure:
            data, error = b"", failure
        self._eager = len(data) == self._read_size
        self._read_cb = None
        self._watch.reader = None
        self._loop._changed(self._watch)
        callback(data, error)

    # -- writing -------------------------------------------------------------------------------
    def write(self, data: bytes | memoryview, callback: WriteCallback) -> None:
        if self._watch.closed:
            raise ValueError("write on a closed stream")
        sock = self._sock
        try:  # _write_now() written out: most writes complete here
            count = sock.send(data) if sock is not None else os.write(self._fd, data)
        except BlockingIOError:
            self._write_cb = callback
            self._write_data = data
            self._watch.writer = self._on_writable
            self._loop._changed(self._watch)
            return
        except OSError as error:
            self._loop.call_soon(self._deliver_write, callback, 0, error)
            return
        self._loop.call_soon(self._deliver_write, callback, count, None)

    write_chunk = write  # send() and os.write() take any bytes-like object: no copy, no frame

    def _deliver_write(self, callback: WriteCallback, count: int,
                       error: BaseException | None) -> None:
        if not self._watch.closed:
            callback(count, error)

    def _on_writable(self) -> None:
        callback = self._write_cb
        assert callback is not None
        error: OSError | None = None
        try:
            count = self._write_now(self._write_data)
        except BlockingIOError:
            return
        except OSError as failure:
            count, error = 0, failure
        self._write_cb = None
        self._write_data = b""
        self._watch.writer = None
        self._loop._changed(self._watch)
        callback(count, error)

    # -- ending --------------------------------------------------------------------------------
    def shutdown_write(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the peer is gone already: the next read or write says so
        else:
            self.close()

    def close(self) -> None:
        if self._watch.closed:
            return
        self._loop._forget(self._watch)
        self._read_cb = None
        self._write_cb = None
        if self._owns:
            os.close(self._fd)


class _PosixProcess(Process):
    """A child started on a spawner thread (:mod:`execsession.posix_spawn`) with the given fds
    as its stdio; its process comes a little later — the loop's thread learns of it through
    :meth:`_spawned`. Until then :attr:`pid` is ``None``; a kill is remembered and done when
    the process is there; :meth:`close` cancels a spawn still queued or waits for one under
    way (so the stdio fds must stay open until it returned), then kills and reaps as usual. A
    spawn that fails is reported to :attr:`spawn_failure_handler` (the session ends
    ``spawn-failed``). ``theirs`` are fds of the child's alone, closed once the spawn is over
    whatever its outcome."""

    def __init__(self, loop: SelectorLoop, command: Sequence[str] | str, *, shell: bool,
                 stdio: tuple[int, int, int | None], theirs: list[int], cwd: str | None,
                 env: dict[str, str] | None, held_socket: int | None = None) -> None:
        self._loop = loop
        self._theirs = theirs
        guardian = loop.guardian
        stdin, stdout, stderr = stdio

        def start() -> posix_spawn.Process:
            # On a spawner thread: start it, and register its group with the guardian at once.
            process = posix_spawn.spawn(command, shell=shell, stdin=stdin, stdout=stdout,
                                        stderr=stderr, cwd=cwd, env=env)
            try:
                guardian.guard(process.pid)
            except BaseException:  # the loop closed meanwhile: nobody would kill it
                _kill_and_reap(process)
                raise
            return process

        self.pid: int | None = None
        self._process: posix_spawn.Process | None = None
        self._spawn_error: BaseException | None = None
        self._guarded = False
        self._kill_pending = False
        self._closed = False
        self._returncode: int | None = None  # known once it exited (maybe not reaped yet)
        self._reaped = False
        self._on_exit: Callable[[int], None] | None = None
        self._pidfd: int | None = None
        self._pid_watch: _Watch | None = None
        self._poll_delay = POLL_MIN
        self._job: posix_spawn.SpawnJob | None = None
        self._held_socket: int | None = None
        try:
            guardian.start()  # a no-op once it runs
            if held_socket is not None:
                guardian.hold(held_socket)
                self._held_socket = held_socket
            self._job = posix_spawn.SpawnJob(
                start, lambda job: loop.call_soon_threadsafe(self._spawned))
            loop.spawner.submit(self._job)
        except BaseException:
            self._job = None
            for fd in self._theirs:
                os.close(fd)
            self._theirs = []
            self.close()
            raise

    def _started(self) -> None:
        """The process runs and its group is guarded (on the loop's thread)."""

    # -- the spawn's outcome ---------------------------------------------------------------------
    def _settle(self) -> None:
        """Take the finished job's outcome (once): the process, or the error. Closes the
        child's ends of the pipes."""
        job = self._job
        if job is None or job.state not in (job.DONE, job.CANCELLED):
            return
        self._job = None
        for fd in self._theirs:
            os.close(fd)
        self._theirs = []
        if job.result is not None:
            self._process = job.result
            self.pid = job.result.pid
            self._guarded = True
        elif job.error is not None:
            self._spawn_error = job.error
        else:
            self._spawn_error = RuntimeError("the spawn was cancelled: the loop closed")

    def _spawned(self) -> None:
        """On the loop's thread, once the spawn is over."""
        if self._closed:
            return
        self._settle()
        if self._process is None:
            handler = self.spawn_failure_handler
            error = self._spawn_error
            if handler is not None and error is not None:
                handler(error)
            return
        if self._kill_pending:
            self._kill_group()
        # Its group is registered with the guardian by now (the spawner thread did it first).
        log.info("child %d started", self.pid)
        if self._on_exit is not None:
            self._watch_pid()
        self._started()

    def watch_exit(self, callback: Callable[[int], None]) -> None:
        self._on_exit = callback
        if self._process is not None:
            self._watch_pid()

    def _watch_pid(self) -> None:
        assert self.pid is not None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._loop.call_later(POLL_MIN, self._poll)
            return
        self._pid_watch = _Watch(self._pidfd)
        self._pid_watch.reader = self._exited
        self._loop._changed(self._pid_watch)

    def expect_exit(self) -> None:
        self._poll_delay = POLL_MIN

    def _exit_status(self) -> int | None:
        """The child's exit code (negative signal number) if it has exited, leaving it
        unreaped (``WNOWAIT``), else ``None``."""
        process = self._process
        assert process is not None and self.pid is not None
        if not hasattr(os, "waitid"):  # pragma: no cover - platforms without waitid
            self._reaped = process.poll() is not None  # reaps: the group may be gone
            if self._reaped:
                self._unguard()
            return process.returncode
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped by someone else
            self._reaped = True
            self._unguard()
            return process.wait()
        if info is None:
            return None
        if info.si_code == os.CLD_EXITED:
            return info.si_status
        return -info.si_status  # killed or dumped: the signal number

    def _poll(self) -> None:
        if self._returncode is not None:
            return
        if self._exit_status() is not None:
            self._exited()
            return
        self._poll_delay = min(POLL_MAX, self._poll_delay * 2)
        self._loop.call_later(self._poll_delay, self._poll)

    def _exited(self) -> None:
        """The child exited (the pidfd is readable, or the poll saw it): report its code. It
        stays a zombie, so its group can still be killed, until :meth:`close` reaps it."""
        if self._returncode is not None:
            return
        self._stop_watching_exit()
        returncode = self._exit_status()
        if returncode is None:  # pragma: no cover - a pidfd is readable only once it exited
            assert self._process is not None
            returncode = self._process.wait() or 0
            self._reaped = True
            self._unguard()
        self._returncode = returncode
        if self._on_exit is not None:
            self._on_exit(returncode)

    def _stop_watching_exit(self) -> None:
        """Forget the pidfd's watch and close the pidfd (once)."""
        if self._pid_watch is not None:
            self._loop._forget(self._pid_watch)
            self._pid_watch = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _unguard(self) -> None:
        """Tell the guardian the group is no longer its business (once)."""
        if self._guarded and self.pid is not None:
            self._guarded = False
            self._loop.guardian.release(self.pid)

    def _kill_group(self) -> None:
        assert self._process is not None
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            # The group is gone and its id reused by someone else's: kill the leader only.
            self._process.kill()

    def kill(self) -> None:
        if self._process is None:
            self._kill_pending = True  # not started yet: killed the moment it is
            return
        if not self._reaped:  # once reaped, the pid may belong to another process
            self._kill_group()
            self._poll_delay = POLL_MIN

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_watching_exit()
        if self._job is not None:
            self._job.cancel()  # never starts, or wait for the spawn under way (one spawn)
        self._settle()
        if self._held_socket is not None:
            # The spawn is over (or never happens): the caller may close the socket now.
            self._loop.guardian.unhold(self._held_socket)
            self._held_socket = None
        if self._process is None or self._reaped:
            return
        # Kill what is left of the tree while the (zombie or live) leader keeps the group id
        # ours, then reap it; a live child that does not die within a second is reaped later
        # (posix_spawn.Process keeps it). The group got SIGKILL (every member at once: it
        # is doomed), so the guardian can forget it — before the reap frees the id.
        self._kill_group()
        self._unguard()
        returncode = self._process.wait(timeout=1.0)
        if returncode is None:
            return  # reaped later (posix_spawn keeps it)
        self._reaped = True
        if self._returncode is None:
            self._returncode = returncode


class _PosixChild(_PosixProcess, Child):
    """A :class:`_PosixProcess` on pipes: they exist at once (the session relays into its stdin
    from the start); its output is relayed only once the loop knows the process (and so the
    guardian has its group): no client sees a child that a SIGKILL of the server would spare."""

    stdout: _FdStream
    stderr: _FdStream | None

    def __init__(self, loop: SelectorLoop, command: Sequence[str] | str, *, shell: bool,
                 stderr: StderrMode, cwd: str | None, env: dict[str, str] | None) -> None:
        ours: list[int] = []
        theirs: list[int] = []
        try:
            stdin_r, stdin_w = os.pipe()  # os.pipe() fds are close-on-exec
            ours.append(stdin_w)
            theirs.append(stdin_r)
            stdout_r, stdout_w = os.pipe()
            ours.append(stdout_r)
            theirs.append(stdout_w)
            stderr_r: int | None = None
            child_stderr: int | None
            if stderr is StderrMode.SEPARATE:
                stderr_r, child_stderr = os.pipe()
                ours.append(stderr_r)
                theirs.append(child_stderr)
            elif stderr is StderrMode.MERGE:
                child_stderr = stdout_w
            else:
                child_stderr = None  # /dev/null
            for fd in ours:
                os.set_blocking(fd, False)
        except BaseException:
            for fd in ours + theirs:
                os.close(fd)
            raise
        self.stdin = _FdStream(loop, stdin_w, owns=True)
        self.stdout = _FdStream(loop, stdout_r, owns=True, held=True)
        self.stderr = (_FdStream(loop, stderr_r, owns=True, held=True)
                       if stderr_r is not None else None)
        super().__init__(loop, command, shell=shell, stdio=(stdin_r, stdout_w, child_stderr),
                         theirs=theirs, cwd=cwd, env=env)

    def _started(self) -> None:
        self.stdout.release()
        if self.stderr is not None:
            self.stderr.release()

    def close(self) -> None:
        if not self._closed:
            for stream in (self.stdin, self.stdout, self.stderr):
                if stream is not None:
                    stream.close()
        super().close()


def _kill_and_reap(process: posix_spawn.Process) -> None:
    """Kill a child's group that nobody will look after, and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        process.kill()
    process.wait(timeout=1.0)

