"""One direction of the exec relay moved by ``splice(2)``: a socket into a pipe, or a pipe into
a socket, with no bytes in Python.

Why: on Linux a 64-byte round trip through the Python relay costs the loop thread a read, a
``bytes`` object, the session's pump and a write per direction (~110k instructions per round
trip, ACTIVE_KB L10-6/L10-7), where ``ncat -e`` moves the bytes in C. ``splice`` moves them
from one descriptor to the other inside the kernel in one call, and the Python around it is a
callback of a few lines.

The kernel's rules this relies on
---------------------------------
* ``splice`` needs a pipe on one side: the session's directions are client socket -> child
  stdin (a pipe) and child stdout (a pipe) -> client socket, so it always applies here.
* It moves bytes atomically: what it returns is in ``dst`` (no partial write, nothing held),
  and the pipe's own capacity is the direction's buffer — flow control is the kernel's: when
  ``dst`` is full nothing more is taken from ``src``.
* With ``SPLICE_F_NONBLOCK`` (and non-blocking sockets) ``EAGAIN`` means *either* that ``src``
  has nothing *or* that ``dst`` is full: the relay then waits for ``dst`` to be writable before
  it waits for ``src`` again — readiness is level-triggered, and waiting on a readable ``src``
  while ``dst`` is full would spin.
* It returns 0 at the end of ``src`` (the socket's FIN, or no writer left on the pipe).
* An error names its side by its errno: ``EPIPE`` is a write to a pipe or socket nobody reads;
  on a socket ``dst`` every error is the write's, on a socket ``src`` (other than ``EPIPE``)
  the read's.

The relay's ``size`` only bounds one call; ``give_full`` and ``give_small`` have no use here
(nothing is held for the session's flow control or growing buffers: the kernel holds the
bytes), so this relay gives its direction back only at end of data, on an error or when
released.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - only posix_backend imports it
    raise ImportError("execsession.posix_relay needs POSIX (splice); the iocp loop relays in C")

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .loop import RELAY_EOF, RELAY_ERROR, RelayCallback

__all__ = ["SpliceCounters", "SpliceRelay", "available"]

SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


def available() -> bool:
    """Whether ``os.splice`` exists here (Linux, Python >= 3.10)."""
    return hasattr(os, "splice")


class Watched(Protocol):
    """What the relay needs of a selectors-backend stream (``posix_backend._FdStream``)."""

    @property
    def fd(self) -> int: ...
    @property
    def is_socket(self) -> bool: ...
    def watch_readable(self, callback: Callable[[], None] | None) -> None: ...
    def watch_writable(self, callback: Callable[[], None] | None) -> None: ...


@dataclass(slots=True)
class SpliceCounters:
    """A splice relay's counters (:class:`execsession.loop.RelayCounters`)."""

    written: int = 0
    """Bytes moved into ``dst``."""
    status: int = 0
    """After ``RELAY_ERROR``: the errno."""
    failed_write: int = 0
    """After ``RELAY_ERROR``: 1 if writing ``dst`` failed, 0 if reading ``src``."""
    inline: int = 0
    """``splice`` calls that moved bytes."""
    dequeued: int = 0
    """Always 0 (nothing completes later here)."""


class SpliceRelay:
    """``src`` -> ``dst`` by ``splice`` whenever the loop says ``src`` is readable, until end
    of data or an error (then ``on_event`` once) or :meth:`close`."""

    __slots__ = ("_counters", "_dst", "_dst_fd", "_on_event", "_running", "_size", "_src",
                 "_src_fd")

    def __init__(self, src: Watched, dst: Watched, size: int, on_event: RelayCallback) -> None:
        if src.is_socket == dst.is_socket:
            raise ValueError("splice needs a pipe on one side and a socket on the other")
        self._src, self._dst = src, dst
        self._src_fd, self._dst_fd = src.fd, dst.fd
        self._size = max(1, size)
        self._on_event = on_event
        self._counters = SpliceCounters()
        self._running = True
        src.watch_readable(self._on_src_ready)

    def info(self) -> SpliceCounters:
        """Its counters (a copy: the relay goes on counting)."""
        counters = self._counters
        return SpliceCounters(counters.written, counters.status, counters.failed_write,
                              counters.inline, counters.dequeued)

    def close(self) -> None:
        """Stop watching (no event follows); the streams are the caller's again. Idempotent."""
        if self._running:
            self._running = False
            self._src.watch_readable(None)
            self._dst.watch_writable(None)

    def _on_src_ready(self) -> None:
        try:
            moved = os.splice(self._src_fd, self._dst_fd, self._size, flags=SPLICE_FLAGS)
        except BlockingIOError:
            # src had nothing after all, or dst is full: wait for dst first (see the essay).
            self._src.watch_readable(None)
            self._dst.watch_writable(self._on_dst_ready)
            return
        except OSError as error:
            code = error.errno or errno.EIO
            self._end(RELAY_ERROR, code, int(code == errno.EPIPE or self._dst.is_socket))
            return
        if moved:
            counters = self._counters
            counters.written += moved
            counters.inline += 1
        else:
            self._end(RELAY_EOF, 0, 0)

    def _on_dst_ready(self) -> None:
        self._dst.watch_writable(None)
        self._src.watch_readable(self._on_src_ready)

    def _end(self, event: int, status: int, failed_write: int) -> None:
        counters = self._counters
        counters.status, counters.failed_write = status, failed_write
        self.close()
        self._on_event(event, self.info(), b"")

    def __repr__(self) -> str:
        return (f"<SpliceRelay {self._src_fd} -> {self._dst_fd} "
                f"{'running' if self._running else 'closed'}>")
