"""The event mapping against what it claims to imitate: Linux epoll.

Each situation below is built with real sockets. ``WINDOWS`` is what Windows' AFD reports for it,
taken from Wine's conformance tests (``dlls/ws2_32/tests/afd.c``, ``test_poll``: ``ok()`` lines
that are not ``todo_wine``, i.e. that pass on Windows). The Linux leg builds each situation and
asks the real epoll; the mapping of the Windows report must equal it, interest by interest. The
Wine leg builds the same situations and checks that AFD reports the ``WINDOWS`` column (or the
recorded Wine difference), so neither column is taken from this package's own code.
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afd import AfdPollEvents, PollEvents, afd_events_for, poll_events_from

A, P = AfdPollEvents, PollEvents
WAIT = 10.0

# What Windows reports (afd.c's names: READ = RECEIVE, OOB = RECEIVE_EXPEDITED, WRITE = SEND,
# HUP = DISCONNECT, RESET = ABORT, CONNECT_ERR = CONNECT_FAIL).
WINDOWS = {
    "idle": A.SEND | A.CONNECT,
    "data waiting": A.RECEIVE | A.SEND | A.CONNECT,
    "peer shut down": A.SEND | A.CONNECT | A.DISCONNECT,
    "peer shut down after data": A.RECEIVE | A.SEND | A.CONNECT | A.DISCONNECT,
    "out-of-band byte": A.RECEIVE_EXPEDITED | A.SEND | A.CONNECT,
    "reset by peer": A.ABORT | A.SEND | A.CONNECT,
    "client to accept": A.ACCEPT,
    "connection refused": A.CONNECT_FAIL,
}
# Where Wine 8.0 reports otherwise (afd.c marks these todo_wine; seen here too).
WINE = {
    "peer shut down after data": A.RECEIVE | A.SEND | A.CONNECT,  # no DISCONNECT while data waits
}
INTERESTS = [P.IN, P.OUT, P.PRI, P.RDHUP, P.IN | P.OUT, P.IN | P.RDHUP,
             P.IN | P.OUT | P.PRI | P.RDHUP]


def _pair(stack: ExitStack) -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = stack.enter_context(socket.create_connection(listener.getsockname()))
        server = stack.enter_context(listener.accept()[0])
    return client, server


def _wait(sock: socket.socket, *, read: bool = False, write: bool = False,
          error: bool = False) -> None:
    """Until ``sock`` is readable, writable or exceptional (as asked): the situation is there."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        ready = select.select([sock] if read else [], [sock] if write else [],
                              [sock] if error else [], 0.5)
        if any(ready):
            return
    raise AssertionError("the situation did not arise in time")


def build(name: str, stack: ExitStack) -> socket.socket:
    """The socket in situation ``name`` (its peers kept open by ``stack``)."""
    if name == "client to accept":
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        stack.enter_context(socket.create_connection(listener.getsockname()))
        _wait(listener, read=True)
        return listener
    if name == "connection refused":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            address = probe.getsockname()  # nothing listens there once closed
        client = stack.enter_context(socket.socket())
        client.setblocking(False)
        try:
            client.connect(address)
        except OSError:
            pass  # in progress (or refused at once)
        _wait(client, write=True, error=True)
        return client
    client, server = _pair(stack)
    if name == "idle":
        _wait(server, write=True)
    elif name == "data waiting":
        client.send(b"x")
        _wait(server, read=True)
    elif name == "peer shut down":
        client.shutdown(socket.SHUT_WR)
        _wait(server, read=True)
    elif name == "peer shut down after data":
        client.send(b"x")
        client.shutdown(socket.SHUT_WR)
        _wait(server, read=True)
        time.sleep(0.2)  # the FIN after the byte (readability came with the byte)
    elif name == "out-of-band byte":
        client.send(b"!", socket.MSG_OOB)
        _wait(server, error=True)
    elif name == "reset by peer":
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        _wait(server, read=True)
    else:
        raise AssertionError(name)
    return server


@pytest.fixture(params=list(WINDOWS))
def situation(request: pytest.FixtureRequest) -> Iterator[tuple[str, socket.socket]]:
    with ExitStack() as stack:
        yield request.param, build(request.param, stack)


# -- the mapping against the real epoll (Linux leg) ---------------------------------------------
@pytest.mark.posix
@pytest.mark.parametrize("interest", INTERESTS, ids=lambda i: str(int(i)))
def test_the_windows_report_maps_to_what_linux_epoll_reports(
        situation: tuple[str, socket.socket], interest: PollEvents) -> None:
    name, sock = situation
    if sys.platform != "linux":  # the marker skips it elsewhere; epoll is Linux's
        raise AssertionError(sys.platform)
    else:
        epoll = select.epoll()
        try:
            epoll.register(sock.fileno(), int(interest))  # PollEvents has epoll's values
            reported = epoll.poll(0)
        finally:
            epoll.close()
        linux = P(reported[0][1]) if reported else P(0)
        asked = afd_events_for(interest)
        assert poll_events_from(WINDOWS[name] & asked, interest) == linux, (name, interest)


# -- the Windows column against the real AFD (Wine legs) ----------------------------------------
def _afd_reports(sock: socket.socket) -> AfdPollEvents:
    from afd import AfdHelperHandle, base_socket_handle
    from iocp import CompletionPort

    everything = A(sum(int(flag) for flag in A))
    with CompletionPort() as port, AfdHelperHandle(port, 1) as helper:
        poll = helper.poll([(base_socket_handle(sock), everything)])
        [completion] = port.dequeue(timeout=WAIT)
        assert completion.operation is poll and poll.succeeded
        return A(poll.results[0].events)


def _under_wine() -> bool:
    if sys.platform == "win32":
        import ctypes

        return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")
    return False


@pytest.mark.windows
def test_afd_reports_what_windows_reports(situation: tuple[str, socket.socket]) -> None:
    assert sys.platform == "win32"  # the marker skips it elsewhere
    name, sock = situation
    expected = WINE.get(name, WINDOWS[name]) if _under_wine() else WINDOWS[name]
    assert _afd_reports(sock) == expected, name


# -- properties the mapping keeps for every input ------------------------------------------------
interests = st.sets(st.sampled_from(list(PollEvents))).map(
    lambda members: PollEvents(sum(int(m) for m in members)))
reports = st.integers(min_value=0, max_value=0x1FF).map(AfdPollEvents)


@given(interests)
def test_connect_is_never_requested(interest: PollEvents) -> None:
    """Every connected socket reports CONNECT (afd.c: ``WRITE | CONNECT`` when idle): asking
    for it would complete every poll at once (trio#52)."""
    assert not afd_events_for(interest) & A.CONNECT


@given(interests)
def test_a_poll_asks_for_the_closing_events_whenever_it_asks_for_anything(
        interest: PollEvents) -> None:
    """A poll that ignored a close, reset or failed connect would never complete for it."""
    asked = afd_events_for(interest)
    if asked:
        assert asked & (A.ABORT | A.LOCAL_CLOSE | A.CONNECT_FAIL) == (
            A.ABORT | A.LOCAL_CLOSE | A.CONNECT_FAIL)


@given(reports, interests)
def test_only_interest_plus_err_and_hup_are_reported(reported: AfdPollEvents,
                                                     interest: PollEvents) -> None:
    """epoll's rule: what was asked for, plus ERR and HUP, which are always reported."""
    assert poll_events_from(reported, interest) & ~(interest | P.ERR | P.HUP) == 0
