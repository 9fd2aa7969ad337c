"""AfdSelector without the 512-socket ceiling; the stdlib contract itself is checked, against
SelectSelector, in test_selector_contract.py."""

from __future__ import annotations

import selectors
import socket

import pytest

from afd import AfdSelector

pytestmark = pytest.mark.windows
R, W = selectors.EVENT_READ, selectors.EVENT_WRITE


def test_read_and_write_readiness(connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = connected_pair
    with AfdSelector() as selector:
        key = selector.register(first, R | W, data="d")
        assert key == selectors.SelectorKey(first, first.fileno(), R | W, "d")
        assert selector.select(timeout=5) == [(key, W)]
        second.send(b"x")
        assert selector.select(timeout=5) == [(key, R | W)]
        key = selector.modify(first, R, data="r")
        assert selector.select(timeout=5) == [(key, R)]
        assert selector.get_map()[first] is key
        assert list(selector.get_map()) == [first.fileno()]
        assert selector.unregister(first) is key
        assert len(selector.get_map()) == 0


def test_a_closed_socket_can_still_be_unregistered() -> None:
    first, second = socket.socketpair()
    with AfdSelector() as selector, second:
        key = selector.register(first, R)
        first.close()
        assert selector.select(timeout=0.3) == []
        assert selector.unregister(first) is key


def test_more_sockets_than_select_allows() -> None:
    pairs = [socket.socketpair() for _ in range(600)]
    try:
        with AfdSelector() as selector:
            for mine, theirs in pairs:
                selector.register(mine, R)
                selector.register(theirs, R)
            pairs[599][1].send(b"!")
            ready = selector.select(timeout=10)
            assert [key.fileobj for key, _ in ready] == [pairs[599][0]]
    finally:
        for mine, theirs in pairs:
            mine.close()
            theirs.close()
