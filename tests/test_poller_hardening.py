"""AfdPoller / AfdSelector / the asyncio loop under exceptions, closes and errors (issue 11).

Exceptions are injected right after the real kernel call returns (KeyboardInterrupt lands
there most): the issuing call (``NtDeviceIoControlFile`` in pure ctypes, the speedups'
``afd_poll``), the dequeue (``NtRemoveIoCompletionEx`` / ``remove_into``), and the port's
``dequeue`` itself; a real KeyboardInterrupt is delivered to a thread blocked in
``AfdSelector.select``. Afterwards no poll is lost (``outstanding_polls`` equals the port's
``pending_count``; the socket is still reported), and in the Debug build of the speedups no
operation the port released is still tracked as in flight.
"""

from __future__ import annotations

import _thread
import asyncio
import ctypes
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from afd import AfdPoller, AfdSelector, PollerClosedError, PollEvents
from afd.asyncio_loop import new_event_loop
from afd.helper import AfdHelperHandle, AfdPollOperation
from iocp import CompletionPort
from ntdll import functions as nt
from ntdll import speedups
from ntdll import status as ntstatus

pytestmark = pytest.mark.windows
P = PollEvents
STATUS_INSUFFICIENT_RESOURCES = 0xC000009A


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt arriving right after a kernel call returned."""


def interrupt_after_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str,
                         armed: list[bool]) -> list[Any]:
    """Wrap ``owner.name``: while ``armed[0]``, the next call runs for real, disarms, and
    raises :class:`Interrupted`. Returns the list of real results of interrupted calls."""
    real = getattr(owner, name)
    results: list[Any] = []

    def hooked(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if armed[0]:
            armed[0] = False
            results.append(result)
            raise Interrupted(name)
        return result

    monkeypatch.setattr(owner, name, hooked)
    return results


def hook_issue(monkeypatch: pytest.MonkeyPatch, armed: list[bool]) -> list[Any]:
    if speedups.native is not None:
        return interrupt_after_call(monkeypatch, speedups.native, "afd_poll", armed)
    return interrupt_after_call(monkeypatch, nt, "NtDeviceIoControlFile", armed)


def hook_kernel_dequeue(monkeypatch: pytest.MonkeyPatch, armed: list[bool]) -> list[Any]:
    if speedups.native is not None:
        return interrupt_after_call(monkeypatch, speedups.native, "remove_into", armed)
    return interrupt_after_call(monkeypatch, nt, "NtRemoveIoCompletionEx", armed)


@pytest.fixture
def issued(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[AfdPollOperation]]:
    """Every one-socket poll operation made while the test runs; afterwards, in the Debug
    build, none the port released is still tracked as in flight (released early)."""
    made: list[AfdPollOperation] = []
    real = AfdHelperHandle.new_poll

    def recording(tag: Any = None) -> AfdPollOperation:
        operation = real(tag)
        made.append(operation)
        return operation

    monkeypatch.setattr(AfdHelperHandle, "new_poll", staticmethod(recording))
    yield made
    check_nothing_released_early(made)


def check_nothing_released_early(operations: list[AfdPollOperation]) -> None:
    native = speedups.native
    if native is None or not native.debug:
        return
    for operation in operations:
        tracked = native.in_flight(operation._overlapped)
        assert tracked == operation.pending, (
            f"{operation!r}: the C build tracks it as {'in flight' if tracked else 'done'}")


def settle(poller: AfdPoller) -> None:
    """Every poll accounted for: the poller's count is the port's."""
    assert poller.outstanding_polls == poller._port.pending_count
    assert poller._port.stray_completions == 0


def poll_until(poller: AfdPoller, wanted: Callable[[list[tuple[object, PollEvents]]], bool],
               seconds: float = 10) -> list[tuple[object, PollEvents]]:
    deadline = time.monotonic() + seconds
    seen: list[tuple[object, PollEvents]] = []
    while time.monotonic() < deadline:
        seen += poller.poll(timeout=0.5)
        if wanted(seen):
            return seen
    raise AssertionError(f"not reported in {seconds} s: saw {seen}")


# -- the close watch ---------------------------------------------------------------------------
def _reuse_handle(handle: int) -> socket.socket:
    """A new socket that got ``handle`` (Wine hands out the lowest free value)."""
    made: list[socket.socket] = []
    try:
        while len(made) < 256 and (not made or made[-1].fileno() != handle):
            made.append(socket.socket())
        new = made.pop()
        assert new.fileno() == handle, "no new socket got the closed socket's handle"
        return new
    finally:
        for spare in made:
            spare.close()


@pytest.mark.parametrize("how", ["no-interest", "oneshot-fired", "reading"])
def test_every_close_is_seen_and_a_reused_handle_can_be_registered(how: str) -> None:
    """A socket with no poll of interest (interest 0, a fired one-shot) still has its close
    seen: it leaves the set, and a socket that gets its handle value can be registered."""
    with AfdPoller() as poller:
        first, second = socket.socketpair()
        with second:
            if how == "no-interest":
                poller.register(first, 0, data="old")
            elif how == "oneshot-fired":
                poller.register(first, P.IN, data="old", oneshot=True)
                second.send(b"x")
                assert poller.poll(timeout=5) == [("old", P.IN)]
                assert poller.poll(timeout=0.2) == []  # re-armed: watching the close only
            else:
                poller.register(first, P.IN, data="old")
            assert poller.outstanding_polls == 1
            handle = first.fileno()
            first.close()
            with _reuse_handle(handle) as listener:
                listener.bind(("127.0.0.1", 0))
                listener.listen()
                poller.register(listener, P.IN, data="new")
                assert len(poller) == 1
                with socket.create_connection(listener.getsockname(), timeout=5):
                    assert poller.poll(timeout=5) == [("new", P.IN)]
                poller.unregister(listener)
        assert len(poller) == 0
        assert poller.poll(timeout=0.2) == []
        settle(poller)
        assert poller.outstanding_polls == 0


def test_a_closed_socket_with_no_interest_leaves_the_set() -> None:
    first, second = socket.socketpair()
    with AfdPoller() as poller, second:
        poller.register(first, 0, data="quiet")
        handle = first.fileno()
        first.close()
        assert poller.poll(timeout=0.5) == []
        assert len(poller) == 0
        with pytest.raises(FileNotFoundError):
            poller.modify(handle, P.IN)


def test_no_interest_still_reports_a_reset_as_error_and_hang_up() -> None:
    """As epoll: ERR and HUP are reported whatever the interest."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    with listener, socket.create_connection(listener.getsockname()) as client:
        server, _ = listener.accept()
        with server, AfdPoller() as poller:
            poller.register(client, 0, data="c")
            assert poller.poll(timeout=0.2) == []
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00")
            server.close()  # a reset
            [(data, events)] = poller.poll(timeout=5)
            assert data == "c" and events == P.ERR | P.HUP


# -- a poll that completes with an error ---------------------------------------------------------
def _fail_next_poll_asynchronously(monkeypatch: pytest.MonkeyPatch, port: CompletionPort,
                                   armed: list[bool]) -> None:
    """The next issued poll "completes" with an error status instead of reaching AFD: its
    packet is queued for its own OVERLAPPED, as the kernel would (no memory is shared)."""
    def post_failure(apc_context: int) -> int:
        nt.NtSetIoCompletion(port.handle, 1, apc_context, STATUS_INSUFFICIENT_RESOURCES, 0)
        return ntstatus.STATUS_PENDING

    native = speedups.native
    if native is not None:
        real_native = native.afd_poll

        def fake_native(helper: int, overlapped: Any, *args: Any) -> int:
            if not armed[0]:
                return real_native(helper, overlapped, *args)
            armed[0] = False
            return post_failure(ctypes.addressof(overlapped))

        monkeypatch.setattr(native, "afd_poll", fake_native)
        return
    real = nt.NtDeviceIoControlFile

    def fake(handle: int, event: Any, apc_context: Any, *args: Any) -> int:
        if not armed[0]:
            return real(handle, event, apc_context, *args)
        armed[0] = False
        return post_failure(apc_context)

    monkeypatch.setattr(nt, "NtDeviceIoControlFile", fake)


def test_a_poll_that_completes_with_an_error_is_reported_and_rearmed(
        connected_pair: tuple[socket.socket, socket.socket],
        monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = connected_pair
    with AfdPoller() as poller:
        armed = [True]
        _fail_next_poll_asynchronously(monkeypatch, poller._port, armed)
        poller.register(first, P.IN, data="f")
        assert not armed[0]
        assert poller.poll(timeout=5) == [("f", P.IN | P.ERR)]
        assert poller.poll(timeout=0.2) == []  # re-armed with a real poll: nothing to read
        assert poller.outstanding_polls == 1
        second.send(b"x")
        assert poller.poll(timeout=5) == [("f", P.IN)]
        settle(poller)


# -- max_events -----------------------------------------------------------------------------
def test_max_events_bounds_every_poll_and_keeps_the_rest() -> None:
    pairs = [socket.socketpair() for _ in range(5)]
    try:
        with AfdPoller() as poller:
            for index, (mine, theirs) in enumerate(pairs):
                poller.register(mine, P.IN, data=index)
                theirs.send(b"!")
            time.sleep(0.5)  # every completion queued
            with pytest.raises(FileExistsError):
                poller.register(pairs[0][0], P.IN)  # collects all five at once
            first = poller.poll(timeout=5, max_events=2)
            second = poller.poll(timeout=5, max_events=2)
            third = poller.poll(timeout=5, max_events=2)
            assert len(first) == 2 and len(second) == 2 and 1 <= len(third) <= 2
            assert {data for data, _ in first + second + third} == set(range(5))
            settle(poller)
    finally:
        for mine, theirs in pairs:
            mine.close()
            theirs.close()


# -- close while another thread polls ------------------------------------------------------------
def test_close_wakes_a_thread_blocked_in_poll(
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, _ = connected_pair
    poller = AfdPoller()
    poller.register(first, P.IN)
    outcome: list[object] = []
    entered = threading.Event()

    def blocked() -> None:
        entered.set()
        try:
            outcome.append(poller.poll(timeout=None))
            outcome.append(poller.poll(timeout=None))
        except PollerClosedError as error:
            outcome.append(error)

    thread = threading.Thread(target=blocked)
    thread.start()
    entered.wait(5)
    time.sleep(0.3)  # in the kernel call by now
    poller.close()
    thread.join(10)
    assert not thread.is_alive(), "close() did not wake the blocked poll()"
    assert outcome[0] == [] and isinstance(outcome[1], PollerClosedError)
    assert poller._port.closed and poller.outstanding_polls == 0


def test_closing_a_selector_wakes_a_blocked_select(
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    first, _ = connected_pair
    selector = AfdSelector()
    selector.register(first, selectors.EVENT_READ)
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(selector.select(timeout=None)))
    thread.start()
    time.sleep(0.3)
    selector.close()
    thread.join(10)
    assert not thread.is_alive() and outcome == [[]]


# -- exceptions right after the issuing call -----------------------------------------------------
@pytest.mark.parametrize("where", ["register", "modify", "re-arm"])
def test_an_exception_after_the_issuing_call_loses_no_poll(
        where: str, connected_pair: tuple[socket.socket, socket.socket],
        monkeypatch: pytest.MonkeyPatch, issued: list[AfdPollOperation]) -> None:
    first, second = connected_pair
    armed = [False]
    interrupted = hook_issue(monkeypatch, armed)
    with AfdPoller() as poller:
        if where == "register":
            armed[0] = True
            with pytest.raises(Interrupted):
                poller.register(first, P.IN, data="r")
            # Not registered, but the poll the kernel took is owned and cancelled.
            assert len(poller) == 0 and poller.outstanding_polls == 1
            settle(poller)
            assert poller.poll(timeout=0.5) == []
            assert poller.outstanding_polls == 0
            poller.register(first, P.IN, data="r")
            second.send(b"x")
            assert poller.poll(timeout=5) == [("r", P.IN)]
        else:
            poller.register(first, P.OUT, data="w")
            assert poller.poll(timeout=5) == [("w", P.OUT)]  # now idle until the next poll
            armed[0] = True
            if where == "modify":
                with pytest.raises(Interrupted):
                    poller.modify(first, P.IN, data="r")
            else:
                with pytest.raises(Interrupted):
                    poller.poll(timeout=5)  # re-arms, and the exception strikes
                poller.modify(first, P.IN, data="r")  # cancels the OUT poll the kernel took
            assert poller.outstanding_polls == 1
            settle(poller)
            second.send(b"x")
            assert poll_until(poller, lambda seen: ("r", P.IN) in seen)
            assert all(report == ("r", P.IN) for report in poller.poll(timeout=0.2))
        assert interrupted and not armed[0]
        settle(poller)


# -- exceptions right after a dequeue ----------------------------------------------------------
@pytest.mark.parametrize("where", ["kernel call", "port dequeue"])
def test_an_exception_after_a_dequeue_loses_no_completion(
        where: str, monkeypatch: pytest.MonkeyPatch, issued: list[AfdPollOperation]) -> None:
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        with AfdPoller() as poller:
            for index, (mine, _) in enumerate(pairs):
                poller.register(mine, P.IN, data=index, oneshot=True)
            armed = [False]
            if where == "kernel call":
                interrupted = hook_kernel_dequeue(monkeypatch, armed)
            else:
                interrupted = interrupt_after_call(monkeypatch, poller._port, "dequeue", armed)
            for _, theirs in pairs:
                theirs.send(b"!")
            time.sleep(0.5)  # all three completions queued
            armed[0] = True
            with pytest.raises(Interrupted):
                poller.poll(timeout=5)
            assert interrupted and interrupted[0], "the interrupted call dequeued the batch"
            # One-shot: a completion lost now would never be reported again.
            seen = poll_until(poller, lambda seen: len(seen) >= 3, seconds=5)
            assert sorted(seen) == [(index, P.IN) for index in range(3)]
            assert poller.poll(timeout=0.2) == []
            settle(poller)
            assert poller.outstanding_polls == 3  # re-armed, watching the close
    finally:
        for mine, theirs in pairs:
            mine.close()
            theirs.close()


def _interrupt_main_then(action: Callable[[], object], delay: float = 0.3) -> threading.Thread:
    """From another thread: wait until the main thread blocks, interrupt it (as Ctrl-C),
    then run ``action`` (which makes a socket ready and so ends the blocking call)."""
    def run() -> None:
        time.sleep(delay)
        _thread.interrupt_main()
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_keyboard_interrupt_in_a_blocked_select_loses_nothing(
        connected_pair: tuple[socket.socket, socket.socket],
        issued: list[AfdPollOperation]) -> None:
    first, second = connected_pair
    with AfdSelector() as selector:
        key = selector.register(first, selectors.EVENT_READ, data="k")
        other = selector.register(second, selectors.EVENT_READ, data="other")
        thread = _interrupt_main_then(lambda: second.send(b"x"))
        deadline = time.monotonic() + 20
        with pytest.raises(KeyboardInterrupt):
            while time.monotonic() < deadline:
                selector.select(timeout=1)
        thread.join(10)
        poller = selector._poller
        settle(poller)
        assert selector.select(timeout=5) == [(key, selectors.EVENT_READ)]
        first.recv(10)
        assert selector.select(timeout=0.2) == []
        first.send(b"y")
        assert selector.select(timeout=5) == [(other, selectors.EVENT_READ)]
        settle(poller)


def test_keyboard_interrupt_in_the_asyncio_loop_leaves_it_working(
        issued: list[AfdPollOperation]) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    loop = new_event_loop()
    try:
        with listener:
            reader, writer = loop.run_until_complete(
                asyncio.open_connection(*listener.getsockname()))
            server, _ = listener.accept()
            with server:
                read = loop.create_task(reader.read(100))
                thread = _interrupt_main_then(lambda: server.send(b"after ctrl-c"))
                with pytest.raises(KeyboardInterrupt):
                    loop.run_until_complete(read)
                thread.join(10)
                assert loop.run_until_complete(asyncio.wait_for(read, 10)) == b"after ctrl-c"
                writer.write(b"still working")
                loop.run_until_complete(asyncio.wait_for(writer.drain(), 10))
                server.settimeout(10)
                assert server.recv(100) == b"still working"
                server.send(b"and again")
                assert loop.run_until_complete(
                    asyncio.wait_for(reader.read(100), 10)) == b"and again"
                poller = loop._selector._poller  # type: ignore[attr-defined]
                settle(poller)
                writer.close()
                loop.run_until_complete(writer.wait_closed())
    finally:
        loop.close()
