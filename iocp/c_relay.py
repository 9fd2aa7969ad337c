"""One direction of a relay (read ``src``, write what came to ``dst``) driven in C.

Why: under Wine the Python around each completion (the loop turn, the dequeue's hand-over, the
request's start, the callbacks) costs ~150 µs of user CPU per 64-byte round trip of the exec
relay; the same steps in C cost ~25 (ACTIVE_KB CR1-CR7). A :class:`CRelay` hands both handles of
one direction to the C speedups (``ntafd_relay_*`` in speedups/ntafd_speedups.c), which read,
write what was read (the rest again after a partial write), and read again, continuing at once
when a request completed inline (skip-on-success), without returning to Python.

Who owns what, until when (the port's rules, iocp/port.py, kept in C)
----------------------------------------------------------------------
The relay's buffer and its two ``OVERLAPPED`` s are C memory, in the port's *relay set*. From
:meth:`CRelay.run` until its event, C owns both handles' requests in that direction: the caller
issues none on ``src`` reading or ``dst`` writing. The port's :meth:`~iocp.CompletionPort.dequeue`
recognises the relay's completions by their ``OVERLAPPED`` addresses (the handles' keys are
the streams', shared with Python requests in the other direction) and continues them in C; they
never reach Python. A relay is freed only when none of its requests is pending: by
:meth:`CRelay.close` when it is idle, else by the dequeue that sees its last completion after the
cancel that ``close`` made. The port's close cancels every relay request and drains; a request
whose completion never comes keeps the whole set alive for the life of the process, with a
``ResourceWarning`` (as the port's orphaned operations).

Events: the relay gives the direction back
------------------------------------------
A relay leaves C when it reads end of data, when a request fails, or when :meth:`CRelay.stop`
asks, and only once none of its requests is pending. Its *event* is then one completion from
:meth:`~iocp.CompletionPort.dequeue`: ``key`` = the relay's ``token``, ``operation`` None,
``apc_context`` 0, ``status`` one of :data:`EVENT_EOF` / :data:`EVENT_ERROR` /
:data:`EVENT_STOPPED`, ``information`` its bytes written so far. The caller then reads
:meth:`CRelay.info`, takes the bytes read but not yet written with :meth:`CRelay.take`, and owns
both handles again (and may :meth:`CRelay.run` it again later).

Inline budget: one dequeue continues at most ``RELAY_INLINE_BUDGET`` inline completions; past it,
the next continuation is posted to the port and resumes behind what is queued there.

Needs the speedups (``ntdll.speedups.native``); the pure-ctypes implementation keeps the Python
relay. One thread drives a port's relays (the loop's): the C side takes no lock.
"""

from __future__ import annotations

from typing import NamedTuple

from ntdll import speedups

from .overlapped_io import OverlappedIO
from .port import CompletionPort
from .socket_io import SocketIO

__all__ = ["EVENT_EOF", "EVENT_ERROR", "EVENT_FULL", "EVENT_SMALL", "EVENT_STOPPED", "CRelay",
           "RelayInfo", "available"]

EVENT_EOF = 1
"""The relay read end of data (a socket's FIN, a pipe whose writer closed)."""
EVENT_ERROR = 2
"""A request failed: :attr:`RelayInfo.status` is its status."""
EVENT_STOPPED = 3
""":meth:`CRelay.stop` (or the port's close) took it back."""
EVENT_FULL = 4
"""(``give_full`` relays) a read filled the buffer: its bytes are held, not written, so that
the caller's flow control and growing buffers act on bulk transfers (C relays the small)."""
EVENT_SMALL = 5
"""(``give_small`` relays) a read brought fewer than ``give_small`` bytes: held, not written
(the caller may shrink its buffer)."""

IDLE, RUNNING, ENDED = 0, 1, 2


def available() -> bool:
    """Whether C relays can run here (the speedups are loaded)."""
    return speedups.native is not None


class RelayInfo(NamedTuple):
    """A relay's counters, read from C."""

    state: int
    """``IDLE`` (the caller owns the handles), ``RUNNING`` (C does), ``ENDED`` (event due)."""
    event: int
    """The last event (0 before the first)."""
    status: int
    """The failing request's status (unsigned) after :data:`EVENT_ERROR`; a Win32 error ``e``
    of a call that failed at once reads ``0xC007_0000 | e``."""
    written: int
    """Bytes written to ``dst`` since the relay was opened."""
    held: int
    """Bytes read and not yet written (for :meth:`CRelay.take`)."""
    pending: int
    """Requests the kernel still owns."""
    inline: int
    """Requests that completed inline (no packet)."""
    dequeued: int
    """Completions dequeued (packets, and continuations posted at the inline budget)."""
    failed_write: int
    """After :data:`EVENT_ERROR`: 1 if the write to ``dst`` failed, 0 if the read of ``src``."""


class CRelay:
    """``src`` -> ``dst`` relayed in C through ``src.port``; see the module's essay.

    ``token``: the key its events come with (choose one no handle of the port uses). ``size``:
    its buffer (bytes per read). ``give_full``: end with :data:`EVENT_FULL` after a read that
    filled the buffer; ``give_small``: with :data:`EVENT_SMALL` after a read of fewer bytes.
    """

    def __init__(self, src: OverlappedIO, dst: OverlappedIO, token: int, size: int, *,
                 give_full: bool = False, give_small: int = 0) -> None:
        native = speedups.native
        if native is None:
            raise RuntimeError(f"C relays need the speedups ({speedups.LOAD_ERROR})")
        if src.port is not dst.port:
            raise ValueError("src and dst must be on one completion port")
        if not 1 <= size <= 0x7FFFFFFF:
            raise ValueError(f"size must be 1..2**31-1, not {size}")
        self._native = native
        self._port: CompletionPort = src.port
        self._set = self._port._relays()
        self.token = token
        self._address: int | None = native.relay_open(
            self._set, token, src.handle, isinstance(src, SocketIO), src.skip_on_success,
            dst.handle, isinstance(dst, SocketIO), dst.skip_on_success, size, give_full,
            give_small)

    def _live(self) -> int:
        address = self._address
        if address is None or self._port._relay_set != self._set:
            raise ValueError("the relay is closed (or its port is)")
        return address

    def run(self) -> None:
        """Hand the direction to C until its event. The relay must be idle and hold no bytes
        (:meth:`take` them first); the caller must have no request of its own in flight reading
        ``src`` or writing ``dst``."""
        self._native.relay_run(self._live())

    def stop(self) -> bool:
        """Ask C to give the direction back: its pending request is cancelled, and an
        :data:`EVENT_STOPPED` event follows once its completion was seen. ``False`` if it was
        not running (an event is already due, or it is idle)."""
        return self._native.relay_stop(self._live())

    def info(self) -> RelayInfo:
        """Its counters (see :class:`RelayInfo`)."""
        return RelayInfo(*self._native.relay_info(self._live()))

    def take(self) -> bytes:
        """After its event: the bytes it read but did not write (the caller writes them to
        ``dst`` itself). The relay is idle afterwards."""
        return self._native.relay_take(self._live())

    def close(self) -> None:
        """Give the relay up: freed now if idle, else its requests are cancelled and the
        dequeue that sees the last completion frees it (no event comes). Idempotent; a no-op
        once the port closed (the port's close freed or kept it)."""
        address, self._address = self._address, None
        if address is not None and self._port._relay_set == self._set:
            self._native.relay_close(address)

    def __repr__(self) -> str:
        return f"<CRelay token={self.token:#x} {'closed' if self._address is None else 'open'}>"
