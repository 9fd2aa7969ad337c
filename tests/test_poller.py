"""AfdPoller against the real driver (modelled on wepoll's and trio's Windows tests)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from afd import AfdPoller, PollerClosedError, PollEvents

from .support import process_handle_count

pytestmark = pytest.mark.windows
P = PollEvents


def test_readable_level_triggered(connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = connected_pair
    with AfdPoller() as poller:
        poller.register(first, P.IN, data="first")
        assert poller.poll(timeout=0.1) == []
        second.send(b"x")
        assert poller.poll(timeout=5) == [("first", P.IN)]
        assert poller.poll(timeout=5) == [("first", P.IN)]  # still readable: reported again
        first.recv(10)
        assert poller.poll(timeout=0.2) == []


def test_oneshot_reports_once_until_modified(
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = connected_pair
    with AfdPoller() as poller:
        poller.register(first, P.IN, data=1, oneshot=True)
        second.send(b"x")
        assert poller.poll(timeout=5) == [(1, P.IN)]
        assert poller.poll(timeout=0.2) == []
        poller.modify(first, P.IN, data=2)
        assert poller.poll(timeout=5) == [(2, P.IN)]


def test_writable_then_modify_to_readable(
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = connected_pair
    with AfdPoller() as poller:
        poller.register(first, P.OUT, data="w")
        assert poller.poll(timeout=5) == [("w", P.OUT)]
        poller.modify(first, P.IN, data="r")
        assert poller.poll(timeout=0.2) == []
        second.send(b"y")
        assert poller.poll(timeout=5) == [("r", P.IN)]


def test_hang_up_is_readable(connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = connected_pair
    with AfdPoller() as poller:
        poller.register(first, P.IN | P.RDHUP, data="h")
        second.shutdown(socket.SHUT_WR)
        [(data, events)] = poller.poll(timeout=5)
        assert data == "h" and events & P.IN
        assert first.recv(1) == b""


def test_closed_socket_is_dropped_without_error() -> None:
    first, second = socket.socketpair()
    with AfdPoller() as poller, second:
        poller.register(first, P.IN, data="gone")
        handle = first.fileno()
        first.close()
        assert poller.poll(timeout=0.5) == []
        assert len(poller) == 0
        with pytest.raises(FileNotFoundError):
            poller.unregister(handle)


def test_a_reused_handle_can_be_registered_after_a_close_while_registered() -> None:
    """Closing a registered socket and registering a new one that got the same handle value
    works without a poll in between (as with epoll), and the new one is the one reported."""
    with AfdPoller() as poller:
        first, second = socket.socketpair()
        with second:
            poller.register(first, P.IN, data="old")
            handle = first.fileno()
            first.close()
        # Handle values are reused (Wine hands out the lowest free one); new sockets are made
        # until one gets the closed socket's value.
        made: list[socket.socket] = []
        try:
            while len(made) < 256 and (not made or made[-1].fileno() != handle):
                made.append(socket.socket())
            listener = made.pop()
            assert listener.fileno() == handle, "no new socket got the closed socket's handle"
            for spare in made:
                spare.close()
            with listener:
                listener.bind(("127.0.0.1", 0))
                listener.listen()
                poller.register(listener, P.IN, data="new")
                with socket.create_connection(listener.getsockname(), timeout=5):
                    assert poller.poll(timeout=5) == [("new", P.IN)]
                poller.unregister(listener)
        finally:
            for spare in made:
                spare.close()
        assert len(poller) == 0


def test_connect_failure_is_readable_writable_and_error() -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    address = free.getsockname()
    free.close()  # nothing listens there now
    with AfdPoller() as poller, socket.socket() as client:
        client.setblocking(False)
        try:
            client.connect(address)
        except (BlockingIOError, OSError):
            pass
        poller.register(client, P.IN | P.OUT, data="c")
        [(data, events)] = poller.poll(timeout=10)
        assert data == "c"
        assert events & P.ERR and events & P.IN and events & P.OUT


def test_wakeup_from_another_thread() -> None:
    with AfdPoller() as poller:
        timer = threading.Timer(0.2, poller.wakeup)
        timer.start()
        started = time.monotonic()
        assert poller.poll(timeout=10) == []
        timer.join()
        assert time.monotonic() - started < 5


def test_register_from_another_thread_while_polling(
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = connected_pair
    second.send(b"z")
    with AfdPoller() as poller:
        timer = threading.Timer(0.2, poller.register, args=(first, P.IN, "late"))
        timer.start()
        result = poller.poll(timeout=10)
        timer.join()
        assert result == [("late", P.IN)]


def test_unregistered_state_lives_until_its_cancellation_is_dequeued(
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, _ = connected_pair
    with AfdPoller() as poller:
        poller.register(first, P.IN)
        assert poller.outstanding_polls == 1
        poller.unregister(first)
        assert len(poller) == 0
        assert poller.outstanding_polls == 1  # cancelled, but the kernel owns it until dequeued
        assert poller.poll(timeout=0.5) == []
        assert poller.outstanding_polls == 0


def test_modify_from_another_thread_while_polling(
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    """The pending IN poll is cancelled by the other thread's modify; the blocked poll picks up
    the cancellation, issues the OUT poll and reports the socket writable."""
    first, _ = connected_pair
    with AfdPoller() as poller:
        poller.register(first, P.IN, data="reading")
        timer = threading.Timer(0.2, poller.modify, args=(first, P.OUT, "writing"))
        timer.start()
        result = poller.poll(timeout=10)
        timer.join()
        assert result == [("writing", P.OUT)]


def test_unregister_from_another_thread_while_polling(
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = connected_pair
    with AfdPoller() as poller:
        poller.register(first, P.IN, data="gone")
        poller.register(second, P.IN, data="stays")

        def unregister_then_send() -> None:
            poller.unregister(first)
            second.send(b"to first")   # first becomes readable: it must not be reported
            first.send(b"to second")

        timer = threading.Timer(0.2, unregister_then_send)
        timer.start()
        result = poller.poll(timeout=10)
        timer.join()
        assert result == [("stays", P.IN)]
        assert len(poller) == 1
        second.recv(100)
        assert poller.poll(timeout=0.3) == []


def test_modify_storm_from_another_thread_keeps_the_last_interest(
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    """One thread flips the interest 300 times while another polls; afterwards the poller
    reports exactly what the last modify asked for."""
    first, _ = connected_pair
    errors: list[BaseException] = []
    stop = threading.Event()
    with AfdPoller() as poller:
        poller.register(first, P.IN, data=("start", P.IN))

        def polling() -> None:
            try:
                while not stop.is_set():
                    for data, events in poller.poll(timeout=0.05):
                        assert isinstance(data, tuple)
                        asked = data[1]
                        assert events & ~(asked | P.ERR | P.HUP) == 0, (asked, events)
            except BaseException as error:  # reported by the main thread
                errors.append(error)

        thread = threading.Thread(target=polling)
        thread.start()
        for turn in range(300):
            interest = P.OUT if turn % 2 else P.IN
            poller.modify(first, interest, data=(turn, interest))
        poller.modify(first, P.IN, data=("last", P.IN))  # nothing to read: must stay silent
        stop.set()
        thread.join(30)
        assert not thread.is_alive() and errors == []
        assert poller.poll(timeout=0.3) == []
        poller.modify(first, P.OUT, data=("final", P.OUT))
        assert poller.poll(timeout=5) == [(("final", P.OUT), P.OUT)]


def test_two_thousand_sockets_beyond_select_ceiling() -> None:
    pairs = [socket.socketpair() for _ in range(1000)]
    try:
        with AfdPoller() as poller:
            for index, (mine, theirs) in enumerate(pairs):
                poller.register(mine, P.IN, data=("mine", index))
                poller.register(theirs, P.IN, data=("theirs", index))
            assert len(poller) == 2000
            active = {7, 333, 999}
            for index in active:
                pairs[index][1].send(b"!")
            seen: set[object] = set()
            deadline = time.monotonic() + 20
            while len(seen) < len(active) and time.monotonic() < deadline:
                seen.update(data for data, _ in poller.poll(timeout=1))
            assert seen == {("mine", index) for index in active}
    finally:
        for mine, theirs in pairs:
            mine.close()
            theirs.close()


def test_errors_are_the_named_ones(connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, _ = connected_pair
    poller = AfdPoller()
    poller.register(first, P.IN)
    with pytest.raises(FileExistsError):
        poller.register(first, P.IN)
    poller.unregister(first)
    with pytest.raises(FileNotFoundError):
        poller.modify(first, P.OUT)
    poller.close()
    with pytest.raises(PollerClosedError):
        poller.register(first, P.IN)


@pytest.mark.parametrize("events", [P.IN, P(0)], ids=["polling", "no-interest"])
def test_registering_a_non_socket_is_a_clear_error(events: PollEvents) -> None:
    from afd import NotASocketError
    from ntdll import functions as nt

    event = nt.CreateEventW(True, False)
    try:
        with AfdPoller() as poller:
            with pytest.raises(NotASocketError, match="is not a socket") as raised:
                poller.register(event, events)
            assert getattr(raised.value, "winerror", None) == 10038
            assert len(poller) == 0 and poller.outstanding_polls == 0
    finally:
        nt.CloseHandle(event)


def test_register_unregister_cycles_leak_no_handle(
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, _ = connected_pair
    with AfdPoller() as poller:
        for _ in range(20):
            poller.register(first, P.IN)
            poller.unregister(first)
            poller.poll(timeout=0)
        before = process_handle_count()
        for _ in range(1000):
            poller.register(first, P.IN)
            poller.unregister(first)
            poller.poll(timeout=0)
        assert process_handle_count() - before <= 2


def test_close_cancels_every_poll_while_its_helper_is_still_open(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On Windows closing a helper handle does not end the polls it issued for other sockets
    (ACTIVE_KB WD1; Wine ends them): ``close`` must cancel each poll through its helper while
    that is still open, and see every cancellation, before closing the helpers. Under Wine
    the wrong order shows as cancels failing on a closed handle."""
    import iocp.port
    from iocp import CompletionPort, Operation

    outcomes: list[object] = []
    real_cancel = CompletionPort.cancel

    def recording_cancel(self: CompletionPort, operation: Operation) -> bool:
        try:
            result = real_cancel(self, operation)
        except OSError as error:
            outcomes.append(error)
            raise
        outcomes.append(result)
        return result

    monkeypatch.setattr(CompletionPort, "cancel", recording_cancel)
    orphans = len(iocp.port._orphaned)
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        poller = AfdPoller()
        for first, _second in pairs:
            poller.register(first, PollEvents.IN)
        assert poller.outstanding_polls == 3
        poller.close()
    finally:
        for first, second in pairs:
            first.close()
            second.close()
    assert outcomes == [True, True, True]
    assert len(iocp.port._orphaned) == orphans
