"""iocp.CRelay: one direction of a relay driven in C (the speedups' ``ntafd_relay_*``).

Byte-exact relays with inline and pending completions interleaved (random chunk sizes, a reader
that pauses), through sockets and through a child's pipes; a client that aborts mid-transfer; a
child that exits mid-write; stop / take / run again; a relay closed, or its port closed, while
its requests are pending (nothing leaked: the process's handle count stays flat). Wine legs with
the speedups (cffi-debug and cffi-optimized): the pure-ctypes leg keeps the Python relay.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator

import pytest

from iocp import CompletionPort, PipeIO, SocketIO, c_relay, child_stdio_pipe
from iocp.c_relay import ENDED, EVENT_EOF, EVENT_ERROR, EVENT_STOPPED, IDLE, CRelay
from iocp.port import Completion
from iocp.spawn import popen

from .support import process_handle_count, receive_in_random_pieces, send_in_random_pieces

pytestmark = [pytest.mark.windows, pytest.mark.cffi]

WAIT = 30.0
TOKEN_A, TOKEN_B = 0x7E1A_0001, 0x7E1A_0002
CAT = ("import os\n"
       "while True:\n"
       "    b = os.read(0, 65536)\n"
       "    if not b: break\n"
       "    while b: b = b[os.write(1, b):]\n")


def _pair() -> tuple[socket.socket, socket.socket]:
    first, second = socket.socketpair()
    return first, second


def _events(port: CompletionPort, tokens: set[int], *, wait: float = WAIT) -> dict[int, Completion]:
    """Dequeue until every relay in ``tokens`` reported its event; no other completion may
    come (the test issues no Python request)."""
    seen: dict[int, Completion] = {}
    deadline = time.monotonic() + wait
    while set(seen) != tokens:
        assert time.monotonic() < deadline, f"events so far: {seen}"
        for completion in port.dequeue(timeout=0.2):
            assert completion.key in tokens and completion.operation is None, completion
            assert completion.key not in seen, "an event reported twice"
            seen[completion.key] = completion
    return seen


def _recv_driving(port: CompletionPort, reader: socket.socket, size: int) -> bytes:
    """Receive ``size`` bytes from ``reader`` while this thread dequeues (the relay moves only
    when someone dequeues from its port)."""
    reader.setblocking(False)
    got = bytearray()
    deadline = time.monotonic() + WAIT
    while len(got) < size:
        assert time.monotonic() < deadline, got
        assert port.dequeue(timeout=0.05) == []
        try:
            got += reader.recv(size - len(got))
        except BlockingIOError:
            pass
    return bytes(got)


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """client -> (src) relay (dst) -> reader: two connected pairs."""
    client, src = _pair()
    dst, reader = _pair()
    with client, src, dst, reader:
        yield client, src, dst, reader


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_socket_relay_in_c_is_byte_exact_with_inline_and_pending_completions(
        port: CompletionPort, sockets: tuple[socket.socket, ...], seed: int) -> None:
    client, src, dst, reader = sockets
    data = random.Random(seed).randbytes(1024 * 1024 + seed)
    received = bytearray()
    relay = CRelay(SocketIO(port, src, 1), SocketIO(port, dst, 2), TOKEN_A,
                   size=random.Random(seed).choice([512, 4096, 65536]))
    sender = threading.Thread(target=send_in_random_pieces, args=(client, data), kwargs=dict(
        seed=seed, largest=200_000, pause_chance=0.05, pause=0.01))
    receiver = threading.Thread(target=receive_in_random_pieces, args=(reader, received,
                                                                       len(data)), kwargs=dict(
        seed=seed, largest=300_000, pause_chance=0.05, pause=0.02))
    try:
        relay.run()
        sender.start()
        receiver.start()
        event = _events(port, {TOKEN_A})[TOKEN_A]
        sender.join(WAIT)
        receiver.join(WAIT)
        info = relay.info()
        assert event.status == EVENT_EOF and event.information == len(data)
        assert info.state == ENDED and info.pending == 0 and info.written == len(data)
        assert info.held == 0 and relay.take() == b"" and relay.info().state == IDLE
        assert info.inline > 0 and info.dequeued > 0, info  # both kinds of completion came
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
        assert port.stray_completions == 0
    finally:
        relay.close()


def test_stop_gives_the_direction_back_and_run_resumes_it(
        port: CompletionPort, sockets: tuple[socket.socket, ...]) -> None:
    client, src, dst, reader = sockets
    relay = CRelay(SocketIO(port, src, 1), SocketIO(port, dst, 2), TOKEN_A, size=4096)
    try:
        relay.run()
        client.sendall(b"first")
        assert _recv_driving(port, reader, 5) == b"first"
        assert relay.stop()  # its read is pending on an empty socket: cancelled
        event = _events(port, {TOKEN_A})[TOKEN_A]
        assert event.status == EVENT_STOPPED and event.information == 5
        assert relay.info().pending == 0 and relay.take() == b""
        client.sendall(b"while Python owns it")  # not read by the relay
        relay.run()
        assert _recv_driving(port, reader, 20) == b"while Python owns it"
        client.shutdown(socket.SHUT_WR)
        assert _events(port, {TOKEN_A})[TOKEN_A].status == EVENT_EOF
    finally:
        relay.close()


def test_a_client_abort_mid_transfer_ends_the_relay_with_nothing_pending(
        port: CompletionPort, sockets: tuple[socket.socket, ...]) -> None:
    client, src, dst, _reader = sockets
    relay = CRelay(SocketIO(port, src, 1), SocketIO(port, dst, 2), TOKEN_A, size=4096)
    try:
        relay.run()
        client.sendall(random.Random(5).randbytes(100_000))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00")
        client.close()  # a reset, mid-transfer
        event = _events(port, {TOKEN_A})[TOKEN_A]
        info = relay.info()
        assert event.status in (EVENT_EOF, EVENT_ERROR) and info.pending == 0
        assert info.written + info.held <= 100_000
        relay.take()
    finally:
        relay.close()


def _cat_child(port: CompletionPort) -> tuple[subprocess.Popen[bytes], PipeIO, PipeIO]:
    stdin, stdin_fd = child_stdio_pipe(child_reads=True)
    stdout, stdout_fd = child_stdio_pipe(child_reads=False)
    try:
        child = popen([sys.executable, "-S", "-c", CAT], stdin=stdin_fd, stdout=stdout_fd,
                      stderr=subprocess.DEVNULL)
    finally:
        os.close(stdin_fd)
        os.close(stdout_fd)
    return child, PipeIO(port, stdin, 3), PipeIO(port, stdout, 4)


def test_a_relay_through_a_child_in_c_is_byte_exact(port: CompletionPort,
                                                    sockets: tuple[socket.socket, ...]) -> None:
    """socket -> child's stdin, child's stdout -> socket: two relays, one port."""
    client, src, _dst, _reader = sockets
    child, stdin, stdout = _cat_child(port)
    sock = SocketIO(port, src, 1)
    inward = CRelay(sock, stdin, TOKEN_A, size=65536)
    outward = CRelay(stdout, sock, TOKEN_B, size=65536)
    data = random.Random(7).randbytes(4 * 1024 * 1024)
    received = bytearray()
    sender = threading.Thread(target=send_in_random_pieces, args=(client, data), kwargs=dict(
        seed=7, largest=100_000, pause_chance=0.05, pause=0.01))
    receiver = threading.Thread(target=receive_in_random_pieces, args=(client, received,
                                                                       len(data)), kwargs=dict(
        seed=8, largest=100_000, pause_chance=0.05, pause=0.02))
    try:
        inward.run()
        outward.run()
        sender.start()
        receiver.start()
        first = _events(port, {TOKEN_A})[TOKEN_A]  # the client's FIN
        assert first.status == EVENT_EOF and first.information == len(data)
        stdin.close()  # half-close toward the child: it ends, its stdout's writer closes
        second = _events(port, {TOKEN_B})[TOKEN_B]
        assert second.status == EVENT_EOF and second.information == len(data)
        sender.join(WAIT)
        receiver.join(WAIT)
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
        assert child.wait(WAIT) == 0
    finally:
        inward.close()
        outward.close()
        stdout.close()
        stdin.close()
        child.kill()
        child.wait(WAIT)


def test_a_child_exiting_mid_write_ends_its_relay_with_an_error(
        port: CompletionPort, sockets: tuple[socket.socket, ...]) -> None:
    client, src, _dst, _reader = sockets
    stdin, stdin_fd = child_stdio_pipe(child_reads=True, buffer_size=4096)
    try:
        child = popen([sys.executable, "-S", "-c", "import os; os.read(0, 10)"],
                      stdin=stdin_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        os.close(stdin_fd)
    pipe = PipeIO(port, stdin, 3)
    relay = CRelay(SocketIO(port, src, 1), pipe, TOKEN_A, size=65536)
    stop = threading.Event()

    def flood() -> None:
        chunk = b"x" * 65536
        try:
            while not stop.is_set():
                client.sendall(chunk)
        except OSError:
            pass

    sender = threading.Thread(target=flood)
    try:
        relay.run()
        sender.start()
        event = _events(port, {TOKEN_A})[TOKEN_A]
        assert event.status == EVENT_ERROR, event  # the write found the pipe broken
        info = relay.info()
        assert info.pending == 0 and info.status in (0xC000014B, 0xC00700E8, 0xC007006D)
        assert info.failed_write == 1
        assert child.wait(WAIT) == 0
        relay.take()
    finally:
        stop.set()
        client.close()
        sender.join(WAIT)
        relay.close()
        pipe.close()
        child.kill()
        child.wait(WAIT)


def test_relays_closed_while_pending_leak_no_handle_and_no_completion() -> None:
    """Each round: a port, a relay waiting on an empty socket (its read pending), then either
    the relay or the port closed under it. The handle count is flat and the port's close says
    nothing is left."""

    def one_round(close_port_first: bool) -> None:
        port = CompletionPort()
        client, src = _pair()
        dst, reader = _pair()
        try:
            relay = CRelay(SocketIO(port, src, 1), SocketIO(port, dst, 2), TOKEN_A, size=4096)
            relay.run()
            assert relay.info().pending == 1
            if not close_port_first:
                relay.close()
                assert port.dequeue(timeout=0.2) == []  # the cancel's completion: C's, freed
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no leftover may be reported
                port.close()
            relay.close()  # a no-op once the port closed
        finally:
            port.close()
            for sock in (client, src, dst, reader):
                sock.close()

    for flag in (False, True):  # warm up both paths first
        one_round(flag)
    before = process_handle_count()
    for index in range(20):
        one_round(index % 2 == 1)
    assert process_handle_count() - before <= 2  # others' threads may hold one or two


def test_the_exec_loop_relays_a_direction_in_c_and_hands_it_back_on_its_event(
        sockets: tuple[socket.socket, ...]) -> None:
    """execsession's IocpLoop.relay: byte-exact through the loop's own dequeue, the event
    delivered on the loop with the counters and held bytes; a relay still running when the
    loop closes is cancelled and drained without a leftover."""
    from execsession.iocp_backend import IocpLoop

    client, src, dst, reader = sockets
    data = random.Random(11).randbytes(512 * 1024)
    received = bytearray()
    events: list[tuple[int, int, bytes]] = []
    loop = IocpLoop()
    try:
        a, b = loop.socket_stream(src), loop.socket_stream(dst)
        relay = loop.relay(a, b, 8192, lambda event, info, held: events.append(
            (event, info.written, held)))
        assert relay is not None
        sender = threading.Thread(target=send_in_random_pieces, args=(client, data), kwargs=dict(
            seed=11, largest=50_000, pause_chance=0.05, pause=0.01))
        receiver = threading.Thread(target=receive_in_random_pieces, args=(
            reader, received, len(data)), kwargs=dict(seed=12, largest=50_000,
                                                      pause_chance=0.05, pause=0.01))
        sender.start()
        receiver.start()
        assert loop.run(until=lambda: bool(events), timeout=WAIT)
        sender.join(WAIT)
        receiver.join(WAIT)
        assert events == [(EVENT_EOF, len(data), b"")]
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
        back = loop.relay(b, a, 4096, lambda *args: events.append(args))
        assert back is not None and back.info().pending == 1  # reading dst: nothing comes
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loop.close()
    assert events[1:] == []  # closing gives no event


def test_the_c_relay_events_are_the_loop_interface_s_relay_events() -> None:
    """The session reads a C relay's events as ``execsession.loop.RELAY_*`` (shared with the
    selectors backend's splice relay): the numbers must be the same."""
    from execsession import loop as loop_module

    assert (c_relay.EVENT_EOF, c_relay.EVENT_ERROR, c_relay.EVENT_STOPPED, c_relay.EVENT_FULL,
            c_relay.EVENT_SMALL) == (loop_module.RELAY_EOF, loop_module.RELAY_ERROR,
                                     loop_module.RELAY_STOPPED, loop_module.RELAY_FULL,
                                     loop_module.RELAY_SMALL)


def _count_relays(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the exec loop's C relays handed out (one entry per ``IocpLoop.relay`` call)."""
    from execsession.iocp_backend import IocpLoop

    handed: list[int] = []
    original = IocpLoop.relay

    def counting(self: IocpLoop, *args: object, **kwargs: object) -> CRelay | None:
        handed.append(1)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(IocpLoop, "relay", counting)
    return handed


def test_exec_sessions_with_the_c_relay_by_default_come_back_exact(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The default (the C relay step on with the speedups): eight sessions at once, 150 round
    trips each of random sizes (some pipelined), then a 2 MiB exchange: every byte back in
    order, byte counts right, directions handed to C and back (full reads to Python), nothing
    stray or orphaned."""
    from execsession import session as session_module

    from .exec_support import ECHO_CODE, ServerThread, exchange, python_child
    from .test_exec_relay_paths import _orphans, round_trip_clients

    monkeypatch.delenv(session_module.C_RELAY_ENV, raising=False)
    handed = _count_relays(monkeypatch)
    orphans_before = _orphans()
    data = random.Random(31).randbytes(2 * 1024 * 1024)
    with ServerThread(python_child(ECHO_CODE)) as server:
        round_trip_clients(server.address, 8, 150)
        assert exchange(server.address, data) == data
        results = server.wait_results(9, timeout=WAIT * 2)
        port = server.loop.port  # type: ignore[attr-defined]
    assert sorted(result.reason for result in results) == ["exited"] * 9
    bulk = [r for r in results if r.bytes_from_client == len(data)]
    assert len(bulk) == 1 and bulk[0].bytes_to_client == len(data)
    assert len(handed) > 16  # both directions of every session, and again after events
    assert port.stray_completions == 0
    assert port.closed and _orphans() == orphans_before


def test_the_c_relay_variable_at_0_keeps_every_byte_in_python(monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """``NTAFD_EXEC_C_RELAY=0``: the speedups are loaded, yet no direction is handed to C and
    the session relays exactly as the pure-ctypes build does."""
    from execsession import session as session_module

    from .exec_support import ECHO_CODE, ServerThread, exchange, python_child

    monkeypatch.setenv(session_module.C_RELAY_ENV, "0")
    handed = _count_relays(monkeypatch)
    data = random.Random(32).randbytes(300_000)
    with ServerThread(python_child(ECHO_CODE)) as server:
        assert exchange(server.address, b"ping\n") == b"ping\n"
        assert exchange(server.address, data) == data
        results = server.wait_results(2)
    assert [result.reason for result in results] == ["exited", "exited"]
    assert results[1].bytes_from_client == results[1].bytes_to_client == len(data)
    assert handed == []


def test_a_failing_relay_event_callback_ends_its_session_alone(monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """The C path's form of test_exec_session's failing-callback test (whose data-keyed
    injection the C path never calls: C writes the bytes without Python). Here the session's
    own event callback raises at the child's end of output: that session ends as
    ``internal-error``; a session open meanwhile and a new one are served as usual."""
    from execsession import session as session_module
    from execsession.loop import RelayCounters
    from execsession.session import ExecSession

    from .exec_support import (
        ECHO_CODE,
        ServerThread,
        assert_only_the_victim_failed,
        connect,
        python_child,
        recv_all,
    )

    monkeypatch.delenv(session_module.C_RELAY_ENV, raising=False)
    original = ExecSession._on_relay_out
    victims: list[ExecSession] = []

    def faulty(self: ExecSession, event: int, info: RelayCounters, held: bytes) -> None:
        if self in victims and event == EVENT_EOF:
            raise RuntimeError("injected failure in a relay event callback")
        original(self, event, info, held)

    monkeypatch.setattr(ExecSession, "_on_relay_out", faulty)
    with ServerThread(python_child(ECHO_CODE)) as server:
        with connect(server.address) as bystander:
            server.wait_sessions(1)
            first = set(list(server.server.sessions))
            with connect(server.address) as victim:
                server.wait_sessions(2)
                victims.extend(session for session in set(server.server.sessions) - first
                               if isinstance(session, ExecSession))
                victim.sendall(b"boom\n")
                victim.shutdown(socket.SHUT_WR)
                assert recv_all(victim) == b"boom\n"  # relayed by C, then the session ended
            [failed] = server.wait_results(1)
            assert_only_the_victim_failed(server, bystander, failed)
