"""A hypothesis state machine drives AfdPoller (register / modify / unregister / send / drain /
poll, and close / peer shutdown / peer reset; interest 0 among the interests) against a model
of what epoll would report, over real loopback sockets.

Every report is checked against the socket itself (IN: ``recv(MSG_PEEK)`` finds data, or the
socket was drained since its last report, which allows the one completion that may already have
been queued; OUT: the model wanted it and the socket is writable) and against the model (the
data is the current registration's, the events are wanted, a fired one-shot stays silent).
``check_ready_reported`` checks the other direction: every socket the model says is ready is
reported within a few seconds; ``registered_count_matches`` that every close was seen (a
socket registered with no interest, or a one-shot that fired, included: the close watch).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from afd import AfdPoller, PollEvents

pytestmark = pytest.mark.windows
P = PollEvents
PAIRS = 4
INTERESTS = st.sampled_from([P.IN, P.OUT, P.IN | P.OUT, P.IN | P.RDHUP, P(0)])
ALWAYS_REPORTED = P.ERR | P.HUP
READY_WAIT = 5.0


@dataclass
class ModelRegistration:
    interest: PollEvents
    oneshot: bool
    data: tuple[int, int]
    armed: bool = True


class PollerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.poller = AfdPoller()
        self.pairs = [self._new_pair() for _ in range(PAIRS)]
        self.registered: dict[int, ModelRegistration] = {}
        self.in_flight = [0] * PAIRS  # bytes sent to the watched socket and not yet drained
        self.drained_since_report = [False] * PAIRS
        self.shut = [False] * PAIRS  # the peer shut down its sending side: EOF
        self.reset = [False] * PAIRS  # the peer reset the connection
        self.version = 0
        self.closing: tuple[int, int] | None = None  # data of a registration being closed

    @staticmethod
    def _new_pair() -> tuple[socket.socket, socket.socket]:
        watched, peer = socket.socketpair()
        watched.setblocking(False)
        peer.setblocking(False)
        return watched, peer

    @initialize()
    def nothing_reported_at_first(self) -> None:
        assert self.poller.poll(timeout=0) == []

    def teardown(self) -> None:
        self.poller.close()
        for watched, peer in self.pairs:
            watched.close()
            peer.close()

    def _data(self, index: int) -> tuple[int, int]:
        self.version += 1
        return (index, self.version)

    # -- registration --------------------------------------------------------------------
    @rule(index=st.integers(0, PAIRS - 1), interest=INTERESTS, oneshot=st.booleans())
    def register(self, index: int, interest: PollEvents, oneshot: bool) -> None:
        watched = self.pairs[index][0]
        data = self._data(index)
        if index in self.registered:
            with pytest.raises(FileExistsError):
                self.poller.register(watched, interest, data, oneshot=oneshot)
            return
        self.poller.register(watched, interest, data, oneshot=oneshot)
        self.registered[index] = ModelRegistration(interest, oneshot, data)

    @rule(index=st.integers(0, PAIRS - 1), interest=INTERESTS)
    def modify(self, index: int, interest: PollEvents) -> None:
        watched = self.pairs[index][0]
        data = self._data(index)
        if index not in self.registered:
            with pytest.raises(FileNotFoundError):
                self.poller.modify(watched, interest, data)
            return
        self.poller.modify(watched, interest, data)
        model = self.registered[index]
        model.interest, model.data, model.armed = interest, data, True

    @rule(index=st.integers(0, PAIRS - 1))
    def unregister(self, index: int) -> None:
        watched = self.pairs[index][0]
        if index not in self.registered:
            with pytest.raises(FileNotFoundError):
                self.poller.unregister(watched)
            return
        self.poller.unregister(watched)
        del self.registered[index]

    # -- traffic -------------------------------------------------------------------------
    @rule(index=st.integers(0, PAIRS - 1), size=st.integers(1, 4096))
    def send(self, index: int, size: int) -> None:
        if self.shut[index] or self.reset[index]:
            return
        peer = self.pairs[index][1]
        peer.sendall(b"m" * size)
        self.in_flight[index] += size

    @precondition(lambda self: any(self.in_flight))
    @rule(index=st.integers(0, PAIRS - 1))
    def drain(self, index: int) -> None:
        if self.reset[index]:
            return
        watched = self.pairs[index][0]
        deadline = time.monotonic() + READY_WAIT
        while self.in_flight[index] and time.monotonic() < deadline:
            try:
                self.in_flight[index] -= len(watched.recv(65536))
            except BlockingIOError:
                time.sleep(0.005)
        assert self.in_flight[index] == 0, "sent bytes never arrived"
        self.drained_since_report[index] = True

    # -- ends ------------------------------------------------------------------------------
    @rule(index=st.integers(0, PAIRS - 1))
    def peer_shutdown(self, index: int) -> None:
        """The peer shuts down its sending side: the watched socket reads EOF from now on."""
        if self.shut[index] or self.reset[index]:
            return
        self.pairs[index][1].shutdown(socket.SHUT_WR)
        self.shut[index] = True

    @rule(index=st.integers(0, PAIRS - 1))
    def peer_reset(self, index: int) -> None:
        """The peer closes with a zero linger: the watched socket is reset (ERR and HUP are
        reported whatever the interest)."""
        if self.reset[index]:
            return
        peer = self.pairs[index][1]
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00")
        peer.close()
        self.reset[index] = True
        self.in_flight[index] = 0  # a reset may discard what was not read

    @rule(index=st.integers(0, PAIRS - 1))
    def close(self, index: int) -> None:
        """The watched socket is closed while (maybe) registered, with any interest, a fired
        one-shot included: the poller must see the close and drop it. Then the pair is
        replaced (the new socket often gets the closed one's handle value)."""
        watched, peer = self.pairs[index]
        watched.close()
        peer.close()
        model = self.registered.pop(index, None)
        self.closing = model.data if model is not None else None
        deadline = time.monotonic() + READY_WAIT
        while len(self.poller) != len(self.registered) and time.monotonic() < deadline:
            self._poll_once(0.1)
        assert len(self.poller) == len(self.registered), "a closed socket was never dropped"
        self.closing = None
        self.pairs[index] = self._new_pair()
        self.in_flight[index] = 0
        self.drained_since_report[index] = False
        self.shut[index] = self.reset[index] = False

    # -- polling -------------------------------------------------------------------------
    def _check_report(self, data: object, events: PollEvents) -> int:
        assert isinstance(data, tuple)
        index: int = data[0]
        if data == self.closing:
            return index  # queued before the close, which the poller has not seen yet
        model = self.registered.get(index)
        assert model is not None, f"reported {events!r} for unregistered socket {index}"
        assert data == model.data, f"stale data {data} (current {model.data})"
        assert model.armed, f"one-shot socket {index} reported again before modify"
        assert events, "a report with no events"
        assert events & ~(model.interest | ALWAYS_REPORTED) == 0, \
            f"socket {index}: {events!r} outside interest {model.interest!r}"
        watched = self.pairs[index][0]
        if events & P.IN:
            try:
                readable = len(watched.recv(1, socket.MSG_PEEK)) > 0 or self.shut[index]
            except BlockingIOError:
                readable = False
            except ConnectionError:
                readable = True
            readable = readable or self.reset[index]  # a reset socket reads an error
            assert readable or self.drained_since_report[index], \
                f"socket {index} reported IN with nothing to read"
            self.drained_since_report[index] = False
        if events & P.RDHUP:
            assert self.shut[index] or self.reset[index], f"socket {index}: RDHUP, no end"
        if events & (P.ERR | P.HUP):
            assert self.reset[index], f"socket {index}: {events!r} on a healthy pair"
        if model.oneshot:
            model.armed = False
        return index

    def _poll_once(self, timeout: float) -> set[int]:
        return {self._check_report(data, events)
                for data, events in self.poller.poll(timeout=timeout)}

    @rule()
    def poll_briefly(self) -> None:
        self._poll_once(0.05)

    def _expected_ready(self) -> set[int]:
        expected = set()
        for index, model in self.registered.items():
            if not model.armed:
                continue
            if self.reset[index]:
                expected.add(index)  # ERR | HUP, whatever the interest
            elif model.interest & P.OUT or (model.interest & P.IN and (
                    self.in_flight[index] or self.shut[index])):
                expected.add(index)
        return expected

    @rule()
    def check_ready_reported(self) -> None:
        """Level-triggered: every ready, armed socket is reported (within a few polls)."""
        expected = self._expected_ready()
        seen: set[int] = set()
        deadline = time.monotonic() + READY_WAIT
        while not expected <= seen and time.monotonic() < deadline:
            seen |= self._poll_once(0.2)
        assert expected <= seen, f"ready sockets {sorted(expected - seen)} never reported"

    @invariant()
    def registered_count_matches(self) -> None:
        assert len(self.poller) == len(self.registered)


PollerModel.TestCase.settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_poller_against_model = PollerModel.TestCase
