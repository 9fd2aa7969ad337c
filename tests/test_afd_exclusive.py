"""Exclusive AFD polls: the rule Windows follows (``dlls/ws2_32/tests/afd.c``
``test_poll_exclusive`` in Wine's conformance tests, which Wine 8.0 passes without
``todo_wine``), and why ntafd never asks for it.

An *exclusive* poll on a socket ends the earlier exclusive poll on that socket (it completes at
once, reporting nothing); a non-exclusive poll is never ended by another poll. ntafd issues every
poll with ``Exclusive = FALSE``, so two polls on one socket — the exec backend's read and write
polls, or two pollers in one process — each stay pending until their own event.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from afd import AfdHelperHandle, AfdPollEvents, base_socket_handle
from iocp import Completion, CompletionPort
from ntdll import status as ntstatus

pytestmark = pytest.mark.windows

E = AfdPollEvents
HELPER_KEY = 13


@pytest.fixture
def helper(port: CompletionPort) -> Iterator[AfdHelperHandle]:
    with AfdHelperHandle(port, HELPER_KEY) as afd_helper:
        yield afd_helper


def test_two_non_exclusive_polls_on_one_socket_both_wait_and_both_fire(
        port: CompletionPort, helper: AfdHelperHandle,
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = connected_pair
    base = base_socket_handle(first)
    polls = [helper.poll([(base, E.RECEIVE)], tag=name) for name in ("a", "b")]
    assert port.dequeue(timeout=0.2) == []  # neither ended the other
    assert all(poll.pending for poll in polls)
    second.send(b"x")
    completions: list[Completion] = []
    while len(completions) < 2:
        batch = port.dequeue(timeout=10)
        assert batch, "a poll did not complete"
        completions += batch
    assert sorted(str(completion.tag) for completion in completions) == ["a", "b"]
    for poll in polls:
        assert poll.status == ntstatus.STATUS_SUCCESS
        assert [entry.events & E.RECEIVE for entry in poll.results] == [E.RECEIVE]


def test_an_exclusive_poll_ends_the_earlier_exclusive_poll_on_the_socket(
        port: CompletionPort, helper: AfdHelperHandle,
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, _ = connected_pair
    base = base_socket_handle(first)
    earlier = helper.poll([(base, E.RECEIVE)], tag="earlier", exclusive=True)
    assert port.dequeue(timeout=0.2) == []
    later = helper.poll([(base, E.RECEIVE)], tag="later", exclusive=True)
    [completion] = port.dequeue(timeout=10)
    assert completion.operation is earlier  # ended, with nothing to report
    assert earlier.status == ntstatus.STATUS_SUCCESS and earlier.results == []
    assert later.pending
    assert helper.cancel(later) is True
    [cancelled] = port.dequeue(timeout=10)
    assert cancelled.operation is later and later.status == ntstatus.STATUS_CANCELLED
