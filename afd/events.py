"""epoll-style readiness events and their mapping to and from AFD poll events."""

from __future__ import annotations

import enum
import functools

from .flags import AfdPollEvents

__all__ = ["PollEvents", "afd_events_for", "poll_events_from"]

A = AfdPollEvents


class PollEvents(enum.IntFlag):
    """Readiness, with Linux epoll's values and meanings."""

    IN = 0x0001
    """Readable: data, a connection to accept, or end of stream."""
    PRI = 0x0002
    """Out-of-band data."""
    OUT = 0x0004
    """Writable."""
    ERR = 0x0008
    """An error is pending (a failed connect, a reset). Always reported."""
    HUP = 0x0010
    """The connection is gone both ways. Always reported."""
    RDHUP = 0x2000
    """The peer shut down its sending side."""


_ALWAYS_WATCHED = A.ABORT | A.LOCAL_CLOSE | A.CONNECT_FAIL


def afd_events_for(events: PollEvents | int) -> AfdPollEvents:
    """The AFD events to ask for so that ``events`` can be reported.

    Never ``AFD_POLL_CONNECT``: it is reported by every poll once connected (trio#52).
    ``ABORT``, ``LOCAL_CLOSE`` and ``CONNECT_FAIL`` are always watched when anything is.
    """
    return _afd_events_for(int(events))


@functools.lru_cache(maxsize=256)
def _afd_events_for(events: int) -> AfdPollEvents:
    # Flag arithmetic costs microseconds per operator; the poller asks this for every poll.
    wanted = A(0)
    if events & PollEvents.IN:
        wanted |= A.RECEIVE | A.ACCEPT | A.DISCONNECT
    if events & PollEvents.RDHUP:
        wanted |= A.DISCONNECT
    if events & PollEvents.PRI:
        wanted |= A.RECEIVE_EXPEDITED
    if events & PollEvents.OUT:
        wanted |= A.SEND
    return wanted | _ALWAYS_WATCHED if wanted else wanted


def poll_events_from(reported: AfdPollEvents | int, interest: PollEvents | int) -> PollEvents:
    """The readiness to report for AFD events ``reported`` on a socket registered for
    ``interest``: as Linux reports it (a reset and a failed connect are readable, writable,
    ERR, HUP and RDHUP), limited to ``interest`` plus ERR and HUP. ``tests/test_events.py``
    checks this against the real epoll, situation by situation."""
    return _poll_events_from(int(reported), int(interest))


@functools.lru_cache(maxsize=4096)
def _poll_events_from(reported: int, interest: int) -> PollEvents:
    ready = PollEvents(0)
    if reported & (A.RECEIVE | A.ACCEPT):
        ready |= PollEvents.IN
    if reported & A.RECEIVE_EXPEDITED:
        ready |= PollEvents.PRI
    if reported & A.SEND:
        ready |= PollEvents.OUT
    if reported & A.DISCONNECT:
        ready |= PollEvents.IN | PollEvents.RDHUP
    if reported & (A.ABORT | A.CONNECT_FAIL):
        # Linux reports a reset and a refused connect alike: the connection is dead both ways.
        ready |= (PollEvents.IN | PollEvents.OUT | PollEvents.ERR | PollEvents.HUP
                  | PollEvents.RDHUP)
    return ready & (PollEvents(interest) | PollEvents.ERR | PollEvents.HUP)
