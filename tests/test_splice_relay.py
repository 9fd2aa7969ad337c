"""The selectors backend's splice relay (execsession/posix_relay.py): a direction of the exec
relay moved by ``splice(2)`` with no bytes in Python — byte-exact both ways, waiting (not
spinning) on a full pipe, end of data and errors reported once with the failing side, and
exec sessions relayed through it by default."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from execsession.loop import RELAY_EOF, RELAY_ERROR, RelayCounters

from .exec_support import ECHO_CODE, WAIT, ServerThread, exchange, python_child

if TYPE_CHECKING:
    from execsession.posix_backend import SelectorLoop, _FdStream
    from execsession.posix_relay import SpliceRelay

pytestmark = pytest.mark.posix  # posix_backend and posix_relay import on POSIX only

F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Python 3.10+, Linux)

Event = tuple[int, int, int, int]
"""(event, written, status, failed_write)"""


@pytest.fixture
def loop() -> Iterator[SelectorLoop]:
    from execsession.posix_backend import SelectorLoop

    selector_loop = SelectorLoop()
    try:
        yield selector_loop
    finally:
        selector_loop.close()


def _pipe_streams(loop: SelectorLoop) -> tuple[_FdStream, _FdStream]:
    if sys.platform == "win32":  # a posix test: for mypy --platform win32
        raise AssertionError("POSIX only")
    from execsession.posix_backend import _FdStream

    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    return (_FdStream(loop, read_end, owns=True), _FdStream(loop, write_end, owns=True))


def _recorder(events: list[Event]) -> Callable[[int, RelayCounters, bytes], None]:
    def on_event(event: int, counters: RelayCounters, held: bytes) -> None:
        assert held == b""  # splice holds nothing
        events.append((event, counters.written, counters.status, counters.failed_write))
    return on_event


def _cat(read_end: int, write_end: int) -> None:
    """A blocking copy from one pipe to another until end of data (the child's part)."""
    if sys.platform == "win32":  # a posix test: for mypy --platform win32
        raise AssertionError("POSIX only")
    os.set_blocking(read_end, True)
    os.set_blocking(write_end, True)
    try:
        while data := os.read(read_end, 65536):
            view = memoryview(data)
            while view:
                view = view[os.write(write_end, view):]
    finally:
        os.close(write_end)


def test_a_relay_through_splice_is_byte_exact_both_ways(loop: SelectorLoop) -> None:
    """socket -> pipe, a copying thread, pipe -> socket: 4 MiB in random pieces comes back
    exact; the client's FIN ends the first relay with RELAY_EOF and its byte count, the pipe's
    end the second."""
    client, server = socket.socketpair()
    client.settimeout(WAIT)
    server_stream = loop.socket_stream(server)
    to_child_r, to_child_w = _pipe_streams(loop)
    from_child_r, from_child_w = _pipe_streams(loop)
    # The copying thread owns the far ends (it closes its output at end of data).
    copier = threading.Thread(target=_cat, args=(os.dup(to_child_r.fd), os.dup(from_child_w.fd)))
    to_child_r.close()
    from_child_w.close()
    copier.start()
    events_in: list[Event] = []
    events_out: list[Event] = []
    relay_in = loop.relay(server_stream, to_child_w, 65536, _recorder(events_in))
    relay_out = loop.relay(from_child_r, server_stream, 65536, _recorder(events_out))
    from execsession.posix_relay import SpliceRelay

    assert isinstance(relay_in, SpliceRelay) and isinstance(relay_out, SpliceRelay)
    data = random.Random(5).randbytes(4 * 1024 * 1024)
    received = bytearray()

    def send() -> None:
        rng = random.Random(6)
        view = memoryview(data)
        while view:
            size = rng.choice((1, 64, 1500, rng.randint(1, 200_000)))
            client.sendall(view[:size])
            view = view[size:]
        client.shutdown(socket.SHUT_WR)

    def receive() -> None:
        while chunk := client.recv(1 << 16):
            received.extend(chunk)

    sender = threading.Thread(target=send)
    receiver = threading.Thread(target=receive)
    sender.start()
    receiver.start()
    try:
        assert loop.run(until=lambda: bool(events_in), timeout=WAIT)
        to_child_w.close()  # the child's stdin ends: the copier ends its output
        assert loop.run(until=lambda: bool(events_out), timeout=WAIT)
        server.shutdown(socket.SHUT_WR)
        sender.join(WAIT)
        receiver.join(WAIT)
        copier.join(WAIT)
    finally:
        client.close()
        server_stream.close()
        server.close()
        from_child_r.close()
    assert events_in == [(RELAY_EOF, len(data), 0, 0)]
    assert events_out == [(RELAY_EOF, len(data), 0, 0)]
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    assert relay_in.info().inline > 0


def test_a_full_pipe_makes_the_relay_wait_for_it_not_spin(loop: SelectorLoop,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Nobody reads the pipe (4 KiB) for a while as 1 MiB comes in: the relay waits for the
    pipe to be writable (a handful of splice calls, not one per loop turn), and once the
    reader starts every byte arrives."""
    if sys.platform == "win32":  # a posix test: for mypy --platform win32
        raise AssertionError("POSIX only")
    client, server = socket.socketpair()
    server_stream = loop.socket_stream(server)
    pipe_r, pipe_w = _pipe_streams(loop)
    import fcntl

    fcntl.fcntl(pipe_w.fd, F_SETPIPE_SZ, 4096)
    calls = [0]
    real_splice = os.splice

    def counting_splice(*args: Any, **kwargs: Any) -> int:
        calls[0] += 1
        return real_splice(*args, **kwargs)

    monkeypatch.setattr(os, "splice", counting_splice)
    events: list[Event] = []
    relay = loop.relay(server_stream, pipe_w, 65536, _recorder(events))
    assert relay is not None
    data = random.Random(7).randbytes(1024 * 1024)
    def send() -> None:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        loop.run(timeout=0.5)  # the pipe fills at once; then nothing can move
        stalled_calls = calls[0]
        assert relay.info().written <= 64 * 1024  # the pipe's capacity (at least a page)
        assert stalled_calls < 50, f"{stalled_calls} splice calls on a full pipe: spinning"
        received = bytearray()
        reader = threading.Thread(target=lambda: received.extend(_read_all(pipe_r.fd)))
        reader.start()
        assert loop.run(until=lambda: bool(events), timeout=WAIT)
        pipe_w.close()
        reader.join(WAIT)
        sender.join(WAIT)
    finally:
        client.close()
        server_stream.close()
        server.close()
        pipe_r.close()
    assert events == [(RELAY_EOF, len(data), 0, 0)]
    assert received == data


def _read_all(fd: int) -> bytes:
    if sys.platform == "win32":  # a posix test: for mypy --platform win32
        raise AssertionError("POSIX only")
    os.set_blocking(fd, True)
    out = bytearray()
    while chunk := os.read(fd, 65536):
        out += chunk
    return bytes(out)


def test_a_pipe_nobody_reads_ends_the_relay_as_a_failed_write(loop: SelectorLoop) -> None:
    """socket -> pipe whose reader is gone (a child that closed its stdin): RELAY_ERROR once,
    EPIPE, the write's side; the socket is still the caller's."""
    client, server = socket.socketpair()
    server_stream = loop.socket_stream(server)
    pipe_r, pipe_w = _pipe_streams(loop)
    pipe_r.close()
    events: list[Event] = []
    assert loop.relay(server_stream, pipe_w, 65536, _recorder(events)) is not None
    client.sendall(b"for nobody")
    try:
        assert loop.run(until=lambda: bool(events), timeout=WAIT)
        assert events == [(RELAY_ERROR, 0, errno.EPIPE, 1)]
        assert isinstance(loop.relay_error(events[0][2]), BrokenPipeError)
    finally:
        client.close()
        server_stream.close()
        server.close()
        pipe_w.close()


def test_a_client_reset_ends_each_direction_with_its_side(loop: SelectorLoop) -> None:
    """The client resets its connection: the relay reading it fails as a read (ECONNRESET,
    failed_write 0); the relay writing to it fails as a write."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server_stream = loop.socket_stream(server)
    to_child_r, to_child_w = _pipe_streams(loop)
    from_child_r, from_child_w = _pipe_streams(loop)
    events_in: list[Event] = []
    events_out: list[Event] = []
    assert loop.relay(server_stream, to_child_w, 65536, _recorder(events_in)) is not None
    assert loop.relay(from_child_r, server_stream, 65536, _recorder(events_out)) is not None
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    try:
        assert loop.run(until=lambda: bool(events_in), timeout=WAIT)
        assert events_in == [(RELAY_ERROR, 0, errno.ECONNRESET, 0)]
        os.write(from_child_w.fd, b"x" * 1000)  # the child's output finds no client
        assert loop.run(until=lambda: bool(events_out), timeout=WAIT)
        [(event, _, status, failed_write)] = events_out
        assert event == RELAY_ERROR and failed_write == 1
        assert status in (errno.EPIPE, errno.ECONNRESET)
    finally:
        server_stream.close()
        server.close()
        for stream in (to_child_r, to_child_w, from_child_r, from_child_w):
            stream.close()


def test_exec_sessions_relay_by_splice_by_default_and_come_back_exact(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The selectors backend's default: both directions of each session go to a splice relay;
    round trips of random sizes from four clients at once and an 8 MiB exchange come back
    exact, with the sessions' byte counts right (the relays' included)."""
    from execsession import session as session_module
    from execsession.posix_backend import SelectorLoop

    from .test_exec_relay_paths import round_trip_clients

    monkeypatch.delenv(session_module.C_RELAY_ENV, raising=False)
    handed: list[int] = []
    original = SelectorLoop.relay

    def counting(self: SelectorLoop, *args: Any, **kwargs: Any) -> SpliceRelay | None:
        relay = original(self, *args, **kwargs)
        handed.append(relay is not None)
        return relay

    monkeypatch.setattr(SelectorLoop, "relay", counting)
    data = random.Random(8).randbytes(8 * 1024 * 1024)
    with ServerThread(python_child(ECHO_CODE)) as server:
        round_trip_clients(server.address, 4, 100)
        assert exchange(server.address, data) == data
        results = server.wait_results(5, timeout=WAIT * 2)
    assert sorted(result.reason for result in results) == ["exited"] * 5
    [bulk] = [r for r in results if r.bytes_from_client == len(data)]
    assert bulk.bytes_to_client == len(data)
    assert len(handed) >= 10 and all(handed)  # both directions of every session
