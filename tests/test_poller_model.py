"""A hypothesis state machine drives AfdPoller (register / modify / unregister / send / drain /
poll) against a model of what epoll would report, over real loopback sockets.

Every report is checked against the socket itself (IN: ``recv(MSG_PEEK)`` finds data, or the
socket was drained since its last report, which allows the one completion that may already have
been queued; OUT: the model wanted it and the socket is writable) and against the model (the
data is the current registration's, the events are wanted, a fired one-shot stays silent).
``check_ready_reported`` checks the other direction: every socket the model says is ready is
reported within a few seconds.
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
        self.pairs = [socket.socketpair() for _ in range(PAIRS)]
        for watched, peer in self.pairs:
            watched.setblocking(False)
            peer.setblocking(False)
        self.registered: dict[int, ModelRegistration] = {}
        self.in_flight = [0] * PAIRS  # bytes sent to the watched socket and not yet drained
        self.drained_since_report = [False] * PAIRS
        self.version = 0

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
        peer = self.pairs[index][1]
        peer.sendall(b"m" * size)
        self.in_flight[index] += size

    @precondition(lambda self: any(self.in_flight))
    @rule(index=st.integers(0, PAIRS - 1))
    def drain(self, index: int) -> None:
        watched = self.pairs[index][0]
        deadline = time.monotonic() + READY_WAIT
        while self.in_flight[index] and time.monotonic() < deadline:
            try:
                self.in_flight[index] -= len(watched.recv(65536))
            except BlockingIOError:
                time.sleep(0.005)
        assert self.in_flight[index] == 0, "sent bytes never arrived"
        self.drained_since_report[index] = True

    # -- polling -------------------------------------------------------------------------
    def _check_report(self, data: object, events: PollEvents) -> int:
        assert isinstance(data, tuple)
        index: int = data[0]
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
                readable = len(watched.recv(1, socket.MSG_PEEK)) > 0
            except BlockingIOError:
                readable = False
            assert readable or self.drained_since_report[index], \
                f"socket {index} reported IN with nothing to read"
            self.drained_since_report[index] = False
        assert not events & (P.ERR | P.HUP), f"socket {index}: {events!r} on a healthy pair"
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
            if model.interest & P.OUT or (model.interest & P.IN and self.in_flight[index]):
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
