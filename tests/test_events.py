"""Mapping between epoll-style events and AFD poll events (portable)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from afd import AfdPollEvents, PollEvents, afd_events_for, poll_events_from

A, P = AfdPollEvents, PollEvents

interests = st.sets(st.sampled_from(list(PollEvents))).map(
    lambda members: PollEvents(sum(int(m) for m in members)))
reports = st.integers(min_value=0, max_value=0x7FF).map(AfdPollEvents)


def test_readable_interest_asks_for_receive_accept_and_disconnect() -> None:
    assert afd_events_for(P.IN) == (A.RECEIVE | A.ACCEPT | A.DISCONNECT | A.ABORT
                                    | A.LOCAL_CLOSE | A.CONNECT_FAIL)
    assert afd_events_for(P.OUT) & A.SEND
    assert afd_events_for(P(0)) == 0


@given(interests)
def test_connect_is_never_requested(interest: PollEvents) -> None:
    assert not afd_events_for(interest) & A.CONNECT


def test_failed_connect_is_readable_writable_and_error() -> None:
    assert poll_events_from(A.CONNECT_FAIL, P.IN | P.OUT) == P.IN | P.OUT | P.ERR
    assert poll_events_from(A.CONNECT_FAIL, P.OUT) == P.OUT | P.ERR


def test_abort_and_disconnect() -> None:
    assert poll_events_from(A.ABORT, P.IN) == P.IN | P.ERR | P.HUP
    assert poll_events_from(A.DISCONNECT, P.IN | P.RDHUP) == P.IN | P.RDHUP


@given(reports, interests)
def test_only_interest_plus_err_and_hup_are_reported(reported: AfdPollEvents,
                                                     interest: PollEvents) -> None:
    assert poll_events_from(reported, interest) & ~(interest | P.ERR | P.HUP) == 0
