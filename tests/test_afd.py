"""AFD primitives against the real driver: base handles, helper polls, cancellation, close."""

from __future__ import annotations

import gc
import socket
import time
import weakref
from collections.abc import Iterator

import pytest

from afd import (
    AfdHelperHandle,
    AfdPollEvents,
    AfdPollOperation,
    NotASocketError,
    base_socket_handle,
    poll_with_event,
)
from iocp import CompletionPort, Handle
from ntdll import NtStatusError
from ntdll import functions as nt
from ntdll import status as ntstatus

pytestmark = pytest.mark.windows

E = AfdPollEvents
HELPER_KEY = 11


@pytest.fixture
def helper(port: CompletionPort) -> Iterator[AfdHelperHandle]:
    with AfdHelperHandle(port, HELPER_KEY) as afd_helper:
        yield afd_helper


def test_base_handle_of_a_socket(listener: socket.socket) -> None:
    base = base_socket_handle(listener)
    assert base != 0
    assert base_socket_handle(listener.fileno()) == base


def test_base_handle_of_a_non_socket_is_a_clear_error() -> None:
    with Handle(nt.CreateEventW(True, False), "event") as event:
        with pytest.raises(NotASocketError, match="is not a socket") as raised:
            base_socket_handle(event.value)
    assert getattr(raised.value, "winerror", None) == 10038  # WSAENOTSOCK
    assert "handle 0x" in str(raised.value) and "10038" in str(raised.value)


def test_base_handle_of_a_closed_socket_is_a_value_error() -> None:
    sock = socket.socket()
    sock.close()
    with pytest.raises(ValueError, match="closed"):
        base_socket_handle(sock)


def test_accept_poll_completes_on_the_port(port: CompletionPort, helper: AfdHelperHandle,
                                           listener: socket.socket) -> None:
    base = base_socket_handle(listener)
    poll = helper.poll([(base, E.ACCEPT)], tag="accept")
    assert port.dequeue(timeout=0.1) == []
    with socket.create_connection(listener.getsockname()):
        [completion] = port.dequeue(timeout=10)
    assert completion.operation is poll and completion.key == HELPER_KEY
    assert completion.apc_context == poll.apc_context
    assert [(entry.handle, entry.events) for entry in poll.results] == [(base, E.ACCEPT)]


def test_cancelling_a_pending_poll_completes_with_status_cancelled(
        port: CompletionPort, helper: AfdHelperHandle, listener: socket.socket) -> None:
    poll = helper.poll([(base_socket_handle(listener), E.ACCEPT)])
    assert poll.pending
    assert helper.cancel(poll) is True
    [completion] = port.dequeue(timeout=10)
    assert completion.operation is poll
    assert completion.status == ntstatus.STATUS_CANCELLED == poll.status
    assert poll.results == []
    assert helper.cancel(poll) is False  # completed: nothing to cancel


def test_receive_and_send_readiness(port: CompletionPort, helper: AfdHelperHandle,
                                    connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = connected_pair
    base = base_socket_handle(first)
    writable = helper.poll([(base, E.SEND)])
    port.dequeue(timeout=10)
    assert writable.results[0].events & E.SEND
    readable = helper.poll([(base, E.RECEIVE)])
    assert port.dequeue(timeout=0.1) == []
    second.send(b"ping")
    port.dequeue(timeout=10)
    assert readable.results[0].events & E.RECEIVE
    assert first.recv(10) == b"ping"


def test_peer_close_reports_disconnect(port: CompletionPort, helper: AfdHelperHandle,
                                       connected_pair: tuple[socket.socket, socket.socket]
                                       ) -> None:
    first, second = connected_pair
    poll = helper.poll([(base_socket_handle(first), E.RECEIVE | E.DISCONNECT | E.ABORT)])
    second.shutdown(socket.SHUT_WR)
    port.dequeue(timeout=10)
    events = poll.results[0].events
    assert events & (E.DISCONNECT | E.RECEIVE), events
    assert first.recv(10) == b""


def test_closing_a_polled_socket_completes_with_local_close(
        port: CompletionPort, helper: AfdHelperHandle) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    poll = helper.poll([(base_socket_handle(sock), E.ACCEPT)])
    sock.close()
    [completion] = port.dequeue(timeout=10)
    assert completion.operation is poll
    assert poll.results[0].events & E.LOCAL_CLOSE


def test_many_sockets_only_the_ready_ones_complete(port: CompletionPort,
                                                   helper: AfdHelperHandle) -> None:
    pairs = [socket.socketpair() for _ in range(50)]
    try:
        polls = {}
        for index, (mine, _) in enumerate(pairs):
            polls[index] = helper.poll([(base_socket_handle(mine), E.RECEIVE)], tag=index)
        ready = set(range(0, 50, 5))
        for index in ready:
            pairs[index][1].send(b"x")
        fired: set[object] = set()
        deadline = time.monotonic() + 10
        while len(fired) < len(ready) and time.monotonic() < deadline:
            fired.update(c.tag for c in port.dequeue(timeout=1))
        assert fired == ready
        assert port.dequeue(timeout=0.2) == []
        for index in set(range(50)) - ready:
            helper.cancel(polls[index])
        cancelled = 0
        while cancelled < 40:
            batch = port.dequeue(timeout=10)
            assert batch
            cancelled += sum(1 for c in batch if c.status == ntstatus.STATUS_CANCELLED)
        assert port.pending_count == 0
    finally:
        for mine, theirs in pairs:
            mine.close()
            theirs.close()


def test_a_dropped_poll_survives_gc_until_its_completion(
        port: CompletionPort, helper: AfdHelperHandle,
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = connected_pair
    poll = helper.poll([(base_socket_handle(first), E.RECEIVE)], tag="dropped")
    reference = weakref.ref(poll)
    del poll
    gc.collect()
    assert reference() is not None
    second.send(b"data")
    [completion] = port.dequeue(timeout=10)
    assert completion.operation is reference()
    assert isinstance(completion.operation, AfdPollOperation)
    assert completion.operation.results[0].events & E.RECEIVE


def test_poll_with_event_reports_and_times_out(listener: socket.socket) -> None:
    base = base_socket_handle(listener)
    started = time.monotonic()
    assert poll_with_event(base, [(base, E.ACCEPT)], 0.2) == []
    assert time.monotonic() - started >= 0.15
    with socket.create_connection(listener.getsockname()):
        fired = poll_with_event(base, [(base, E.ACCEPT)], 10)
    assert [(entry.handle, entry.events) for entry in fired] == [(base, E.ACCEPT)]


def test_poll_on_a_closed_helper_is_refused(port: CompletionPort,
                                            listener: socket.socket) -> None:
    helper = AfdHelperHandle(port, HELPER_KEY)
    helper.close()
    with pytest.raises(ValueError, match="handle is closed"):
        helper.poll([(base_socket_handle(listener), E.ACCEPT)])


def test_poll_naming_an_invalid_socket_handle(
        port: CompletionPort, helper: AfdHelperHandle,
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    """Windows fails the whole poll at once with ``STATUS_INVALID_HANDLE`` when any handle it
    names is not a socket, even beside a valid one, and queues nothing. Evidence: Wine's
    ``dlls/ws2_32/tests/afd.c`` (``test_poll``, "Passing any invalid sockets yields
    STATUS_INVALID_HANDLE": ``0xabacab`` beside a connected socket; the ``ok()`` is not
    ``todo_wine``, so it passes on Windows). Wine 8.0 does the same (F11): no difference."""
    invalid = 0xABACAB
    valid = base_socket_handle(connected_pair[0])
    for entries in ([(invalid, E.RECEIVE | E.SEND)],
                    [(invalid, E.RECEIVE | E.SEND), (valid, E.RECEIVE | E.SEND)]):
        with pytest.raises(NtStatusError) as raised:
            helper.poll(entries)
        assert raised.value.ntstatus == ntstatus.STATUS_INVALID_HANDLE
        assert port.pending_count == 0  # the failed issue left the port's table at once
    assert port.dequeue(timeout=0.2) == []  # and no completion was queued
    # The helper still works afterwards: the valid socket alone is polled as usual.
    poll = helper.poll([(valid, E.SEND)])
    [completion] = port.dequeue(timeout=10)
    assert completion.operation is poll and poll.results[0].events & E.SEND


@pytest.mark.parametrize("bad", [float("inf"), -1.0, float("nan")])
def test_poll_with_event_checks_the_timeout_before_issuing(
        listener: socket.socket, monkeypatch: pytest.MonkeyPatch, bad: float) -> None:
    """``timeout=inf`` used to raise OverflowError *after* the poll was issued, freeing its
    buffers under the kernel: now every bad timeout is refused before any call."""
    calls: list[object] = []
    monkeypatch.setattr(nt, "NtDeviceIoControlFile", lambda *args: calls.append(args))
    base = base_socket_handle(listener)
    with pytest.raises((ValueError, OverflowError)):
        poll_with_event(base, [(base, E.ACCEPT)], bad)
    assert calls == []


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt arriving right after the kernel call returned."""


def test_poll_with_event_cancels_and_waits_on_an_exception_while_pending(
        listener: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception after the poll was issued must not free its buffers under the kernel:
    the poll is cancelled and its completion awaited before the exception goes on."""
    from afd import event_poll

    real = nt.NtDeviceIoControlFile
    blocks: list[object] = []

    def interrupted(*args: object) -> int:
        real(*args)  # type: ignore[arg-type]
        blocks.append(args[3])  # the status block the kernel writes on completion
        raise Interrupted

    monkeypatch.setattr(nt, "NtDeviceIoControlFile", interrupted)
    base = base_socket_handle(listener)
    orphans = len(event_poll._orphaned)
    with pytest.raises(Interrupted):
        poll_with_event(base, [(base, E.ACCEPT)], None)
    [io_status] = blocks
    # Final when poll_with_event let go of it: the kernel is done with the buffers.
    assert io_status.Status & 0xFFFFFFFF == ntstatus.STATUS_CANCELLED  # type: ignore[attr-defined]
    assert len(event_poll._orphaned) == orphans
    monkeypatch.setattr(nt, "NtDeviceIoControlFile", real)
    with socket.create_connection(listener.getsockname()):
        assert poll_with_event(base, [(base, E.ACCEPT)], 10)
