"""The event loop interface the backends implement, and what they share.

An interface only: the backends (``posix_backend``, ``iocp_backend``) implement it and
:mod:`execsession.backends` chooses one, so this module imports no backend.

A loop runs callbacks, timers and I/O on one thread. I/O is *completion style*: a stream is
asked to read or write and calls back when that is done, whatever the kernel's model is (the
selectors backend turns readiness into completions; the IOCP backend gets completions from the
port). One request per direction per stream at a time; a closed stream calls back no more.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import socket
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .config import StderrMode

__all__ = [
    "RELAY_EOF",
    "RELAY_ERROR",
    "RELAY_FULL",
    "RELAY_SMALL",
    "RELAY_STOPPED",
    "Child",
    "Loop",
    "Owned",
    "Process",
    "ReadCallback",
    "RelayCallback",
    "RelayCounters",
    "Stream",
    "Timer",
    "WriteCallback",
]

log = logging.getLogger("execsession.loop")

MAX_SKIPPED_WAITS = 16

ReadCallback = Callable[[bytes | memoryview, BaseException | None], None]
"""Called with the bytes read (``b""`` at end of data) or, on failure, ``b""`` and the error.
A backend may hand out a ``memoryview`` of its read buffer instead of ``bytes`` (no copy): it
is valid for as long as it is referenced (the backend reads into other memory meanwhile), and
:meth:`Stream.write_chunk` writes it without a copy."""
WriteCallback = Callable[[int, BaseException | None], None]
"""Called with the number of bytes written (maybe fewer than asked) or ``0`` and the error."""

# -- relays: a direction moved without the session's Python -----------------------------------
# A loop may offer ``relay(src, dst, size, on_event, give_full=, give_small=)``, returning a
# relay or None (then the session relays in Python), and ``release_relay(relay)``: the IOCP
# loop's runs in C (iocp.c_relay), the selectors loop's with splice(2) (posix_relay). The relay
# owns reading ``src`` and writing ``dst`` until its event, ``on_event(event, counters, held)``.
RELAY_EOF = 1
"""The relay read end of data."""
RELAY_ERROR = 2
"""A read or a write failed: ``counters.status`` and ``counters.failed_write`` say which."""
RELAY_STOPPED = 3
"""The relay was asked to stop."""
RELAY_FULL = 4
"""(``give_full``) a read filled the buffer: its bytes are ``held``, for the session to write."""
RELAY_SMALL = 5
"""(``give_small``) a read brought fewer bytes than asked: ``held``, as for RELAY_FULL."""


# -- the socket as the child's stdio (no relay) ----------------------------------------------------
# A loop may also offer ``spawn_on_socket(command, *, shell, stderr, socket_fd, cwd, env)``,
# returning a :class:`Process` whose stdin and stdout (and stderr in ``merge`` mode) are the
# connection itself, and ``watch_hangup(fd, callback)`` / ``forget_hangup(watch)``: the
# callback runs while ``fd`` reports a hang-up or an error, and nothing is read. The selectors
# loop on Linux has them (execsession.socket_stdio).


class RelayCounters(Protocol):
    """What a relay's event reports (``iocp.c_relay.RelayInfo`` is one)."""

    @property
    def written(self) -> int: """Bytes written to ``dst`` since the relay was opened."""
    @property
    def status(self) -> int: """After RELAY_ERROR: the loop's code for the failure."""
    @property
    def failed_write(self) -> int: """After RELAY_ERROR: 1 if writing ``dst`` failed."""
    @property
    def inline(self) -> int: """Requests done at once (activity, for the session's timers)."""
    @property
    def dequeued(self) -> int: """Requests done later (activity, as ``inline``)."""


RelayCallback = Callable[[int, RelayCounters, bytes], None]
"""``(event, counters, held)``: a relay gave its direction back (a ``RELAY_*`` event), with the
bytes it read but did not write (the session writes them itself)."""


class Owned:
    """Something the loop calls back (a stream, a child) on behalf of a user (a session).

    When one of its callbacks raises, the loop logs the error and calls
    :meth:`callback_failed`, which hands it to :attr:`failure_handler` (if set)."""

    failure_handler: Callable[[BaseException], None] | None = None

    def callback_failed(self, error: BaseException) -> None:
        handler = self.failure_handler
        if handler is not None:
            handler(error)


class Stream(Owned, ABC):
    """One end of a socket or pipe, driven by the loop."""

    read_at_once = False
    """True right after :meth:`read` when its bytes were there already (the callback still
    comes on a later turn): a caller may hold back a write to join them to it (one larger
    write instead of two)."""

    @abstractmethod
    def read(self, size: int, callback: ReadCallback) -> None:
        """Read up to ``size`` bytes; ``callback`` gets them later (never re-entrantly)."""

    @abstractmethod
    def write(self, data: bytes, callback: WriteCallback) -> None:
        """Write a prefix of ``data`` (the stream keeps its own reference until done)."""

    def write_chunk(self, data: bytes | memoryview, callback: WriteCallback) -> None:
        """:meth:`write` for what a read delivered (``bytes``, or a backend's ``memoryview``:
        written from where it is if the backend can, else copied)."""
        self.write(data if type(data) is bytes else bytes(data), callback)

    @abstractmethod
    def shutdown_write(self) -> None:
        """Signal end of data to the other side (socket: ``SHUT_WR``; pipe: close)."""

    @abstractmethod
    def close(self) -> None:
        """Release the handle or fd; requests still outstanding are cancelled silently."""


class Process(Owned, ABC):
    """A child process (and, through a process group or job object, its whole tree).

    Its exit is reported once the child itself has exited; what it started may still run (and
    hold its output) until :meth:`kill` or :meth:`close`, which kill the whole tree."""

    pid: int | None
    """``None`` until the process runs (a backend may start it in the background)."""
    spawn_failure_handler: Callable[[BaseException], None] | None = None
    """Called (on the loop's thread) if a process started in the background could not be
    started after all (no such program...); its stdio then leads nowhere."""

    @abstractmethod
    def watch_exit(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(returncode)`` once the child has exited (its tree may live on)."""

    def expect_exit(self) -> None:
        """A hint: the child closed its output, so its exit is probably near."""

    @abstractmethod
    def kill(self) -> None:
        """Kill the child and everything it started, also after the child itself exited.
        Idempotent; the exit is still reported."""

    @abstractmethod
    def close(self) -> None:
        """Kill what is left of the tree and release everything (streams, job object...);
        reaps the child, waiting briefly if it has not exited yet."""


class Child(Process):
    """A :class:`Process` whose stdio are pipes this side relays (:meth:`Loop.spawn`)."""

    stdin: Stream
    stdout: Stream
    stderr: Stream | None
    """Only in :attr:`StderrMode.SEPARATE`."""


class Timer:
    """A scheduled call; :meth:`cancel` stops it."""

    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop(ABC):
    """One thread's event loop: ready callbacks, timers, and the backend's I/O wait.

    Everything but :meth:`call_soon_threadsafe` and :meth:`stop` must be called on the loop's
    thread.
    """

    backend: str
    WRITES_COMPLETE_LATER = False
    """Whether a write usually completes on a later turn of the loop (overlapped I/O) rather
    than at once (a non-blocking write): then a session writes half a buffer at a time, so
    the next read can proceed meanwhile."""
    MAX_WAIT: float | None = None
    """Upper bound of one I/O wait (``None``: none), so signal handlers get to run."""

    def __init__(self) -> None:
        self._ready: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque())
        self._threadsafe: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque())
        self._timers: list[tuple[float, int, Timer]] = []
        self._serial = itertools.count()
        self._stopping = False
        self._closed = False
        self._thread: int | None = None
        self._skipped_waits = 0

    # -- scheduling ----------------------------------------------------------------------------
    time = staticmethod(time.monotonic)
    """The loop's clock (``time.monotonic`` itself: a session reads it ~6 times per round
    trip, and a Python method around it cost a frame each time)."""

    def call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        """Schedule from any thread (or a signal handler) and wake the loop."""
        self._threadsafe.append((callback, args))
        self._wakeup()

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Timer:
        timer = Timer(self.time() + max(0.0, delay), callback, args)
        heapq.heappush(self._timers, (timer.when, next(self._serial), timer))
        return timer

    def stop(self) -> None:
        """End :meth:`run` after the current iteration. Thread-safe."""
        self._stopping = True
        self._wakeup()

    # -- running -----------------------------------------------------------------------------
    def run(self, until: Callable[[], bool] | None = None, timeout: float | None = None) -> bool:
        """Run until ``until()`` is true (checked before each iteration), :meth:`stop`, or
        ``timeout`` seconds. Returns whether ``until()`` became true (``False`` without one)."""
        if self._closed:
            raise RuntimeError("the loop is closed")
        deadline = None if timeout is None else self.time() + timeout
        self._stopping = False
        self._thread = threading.get_ident()
        try:
            while True:
                if until is not None and until():
                    return True
                self._run_once(deadline)
                if self._stopping or (deadline is not None and self.time() >= deadline):
                    return False
        finally:
            self._thread = None

    def _run_once(self, deadline: float | None) -> None:
        while self._threadsafe:
            self._ready.append(self._threadsafe.popleft())
        if (self._ready and not self._stopping and self._skipped_waits < MAX_SKIPPED_WAITS
                and not self._wait_due()):
            # Callbacks are ready: run them before asking the kernel for more (under Wine even
            # a zero-timeout wait is a wineserver round trip). I/O is still checked at least
            # every MAX_SKIPPED_WAITS iterations, so it cannot starve.
            self._skipped_waits += 1
        else:
            self._skipped_waits = 0
            self._wait(self._wait_time(deadline))
        now = self.time()
        timers = self._timers
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            if not timer.cancelled:
                self._ready.append((timer.callback, timer.args))
        # Only what is ready now: callbacks scheduled by these run in the next iteration, so
        # I/O is never starved.
        for _ in range(len(self._ready)):
            callback, args = self._ready.popleft()
            try:
                callback(*args)
            except Exception as error:
                self._callback_failed(callback, error)

    def _run_isolated(self, callback: Callable[[], object]) -> None:
        """Run ``callback``; an exception ends only what it belongs to (see below)."""
        try:
            callback()
        except Exception as error:
            self._callback_failed(callback, error)

    def _callback_failed(self, callback: Callable[..., object], error: Exception,
                         owner: object = None) -> None:
        """``callback`` raised ``error``: log it and tell its owner (``owner``, else the object
        ``callback`` is a bound method of) through ``callback_failed(error)``, so that only
        what it belongs to ends; the loop goes on with the next callback."""
        if owner is None:
            owner = getattr(callback, "__self__", None)
        # The traceback as text: a log record that kept the exception would keep its frames
        # (and the sessions and loop in them) alive.
        log.error("a callback failed (%s); ending what it belongs to:\n%s",
                  getattr(callback, "__qualname__", repr(callback)),
                  "".join(traceback.format_exception(error)).rstrip())
        handler = getattr(owner, "callback_failed", None)
        if handler is None:
            return
        try:
            handler(error)
        except Exception as second:
            log.error("handling that failure failed too:\n%s",
                      "".join(traceback.format_exception(second)).rstrip())

    def _wait_time(self, deadline: float | None) -> float | None:
        if self._ready or self._stopping:
            return 0.0
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)  # a cancelled timer must not bound the wait
        wait = None
        if self._timers:
            wait = max(0.0, self._timers[0][0] - self.time())
        if deadline is not None:
            remaining = max(0.0, deadline - self.time())
            wait = remaining if wait is None else min(wait, remaining)
        if self.MAX_WAIT is not None:
            wait = self.MAX_WAIT if wait is None else min(wait, self.MAX_WAIT)
        return wait

    # -- backend -----------------------------------------------------------------------------
    def relay_error(self, status: int) -> OSError:
        """The error a relay's ``RELAY_ERROR`` status stands for (an errno here)."""
        return OSError(status, os.strerror(status))

    def _wait_due(self) -> bool:
        """Whether the next iteration must wait on I/O even though callbacks are ready (a
        backend that completes requests inline bounds how many it delivers between waits)."""
        return False

    @abstractmethod
    def _wait(self, timeout: float | None) -> None:
        """Wait for I/O up to ``timeout`` seconds and run its callbacks."""

    @abstractmethod
    def _wakeup(self) -> None:
        """End a wait in progress (thread-safe, signal-safe)."""

    @abstractmethod
    def socket_stream(self, sock: socket.socket) -> Stream:
        """A stream on a connected socket (made non-blocking). The socket stays the caller's:
        :meth:`Stream.close` releases only the loop's hold on it."""

    @abstractmethod
    def spawn(self, command: Sequence[str] | str, *, shell: bool, stderr: StderrMode,
              pipe_sizes: tuple[int, int, int], cwd: str | None = None,
              env: dict[str, str] | None = None) -> Child:
        """Start ``command`` with its stdio on pipes; ``pipe_sizes`` = (stdin, stdout, stderr)."""

    @abstractmethod
    def add_acceptor(self, listener: socket.socket, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``listener`` has connections to accept."""

    @abstractmethod
    def remove_acceptor(self, listener: socket.socket) -> None:
        """Stop watching ``listener`` (before closing it)."""

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Loop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
