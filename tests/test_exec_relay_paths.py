"""The exec relay, byte-exact through every I/O path, and its bad-input endings.

Under Wine this is the IOCP backend: socket and pipe requests completing inline (skip-on-
success) interleaved with pending ones. On Linux the selectors backend runs the same cases.
"""

from __future__ import annotations

import hashlib
import logging
import random
import socket
import sys
import threading
import time

import pytest

from execsession import SessionResult
from tests.exec_support import ECHO_CODE as ECHO
from tests.exec_support import WAIT, ServerThread, connect, exchange, python_child
from tests.support import receive_in_random_pieces, send_in_random_pieces

ABORT_LINGER = b"\1\0\0\0\0\0\0\0"  # SO_LINGER on, 0 s: close() resets the connection


def _client(address: tuple[str, int], data: bytes, seed: int, abort_after: int | None,
            outcome: dict[int, bytes | None]) -> None:
    """Send ``data`` in random chunks with random pauses and read the echo in random sizes;
    with ``abort_after``, reset the connection once that many bytes came back."""
    rng = random.Random(seed)
    with connect(address) as sock:
        def send() -> None:
            try:
                sent = 0
                while sent < len(data):
                    chunk = rng.randint(1, 256 * 1024)
                    sock.sendall(data[sent:sent + chunk])
                    sent += chunk
                    if rng.random() < 0.05:
                        time.sleep(0.002)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the abort case closes the socket under the sender
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        received = bytearray()
        try:
            while True:
                piece = sock.recv(rng.randint(1, 200_000))
                if not piece:
                    break
                received += piece
                if abort_after is not None and len(received) >= abort_after:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT_LINGER)
                    break
        except OSError:
            pass
    sender.join(WAIT)
    outcome[seed] = bytes(received) if abort_after is None else None


def test_random_chunks_and_aborts_keep_every_byte_of_the_others() -> None:
    """64 MiB in all: 8 full relays of 6 MiB (hash equal) and 8 reset mid-transfer, 4 at a
    time on one server; every session ends with its reason, every child is reaped, and on the
    IOCP backend no request is left pending and no stray packet came."""
    full, aborted, size = 8, 8, 6 * 1024 * 1024
    payloads = {seed: random.Random(seed).randbytes(size) for seed in range(full)}
    outcome: dict[int, bytes | None] = {}
    orphans_before = _orphans()
    with ServerThread(python_child(ECHO)) as server:
        jobs: list[tuple[int, int | None]] = [(seed, None) for seed in range(full)]
        jobs += [(100 + index, random.Random(index).randint(256 * 1024, 2 * 1024 * 1024))
                 for index in range(aborted)]
        random.Random(0).shuffle(jobs)
        for start in range(0, len(jobs), 4):
            threads = []
            for seed, abort_after in jobs[start:start + 4]:
                data = payloads.get(seed) or random.Random(seed).randbytes(2 * 1024 * 1024)
                thread = threading.Thread(target=_client, daemon=True, args=(
                    server.address, data, seed, abort_after, outcome))
                thread.start()
                threads.append(thread)
            for thread in threads:
                thread.join(WAIT * 2)
                assert not thread.is_alive()
        results = server.wait_results(full + aborted, timeout=WAIT * 2)
        port = getattr(server.loop, "port", None)
    for seed in range(full):
        got = outcome[seed]
        assert got is not None
        assert hashlib.sha256(got).digest() == hashlib.sha256(payloads[seed]).digest(), seed
    reasons = sorted(result.reason for result in results)
    assert reasons.count("exited") >= full
    assert set(reasons) <= {"exited", "client-disconnected"}
    assert all(result.returncode is not None for result in results)  # every child reaped
    if port is not None:  # IOCP: nothing left to the kernel, no packet for an inline one
        assert port.stray_completions == 0
        assert port.closed and _orphans() == orphans_before  # no buffer left to the kernel


def _orphans() -> int:
    """Operations a closed port had to keep for the life of the process (still pending)."""
    if sys.platform != "win32":
        return 0
    import iocp.port

    return len(iocp.port._orphaned)



# The child's first five bytes choose what it does: "exit!" reads a little more then exits
# with 3 while the client keeps writing; "flood" writes 2 MiB and exits at once (its output
# is then read from a pipe whose writer is gone); anything else: echo.
DISPATCH = (
    "import os, sys\n"
    "first = b''\n"
    "while len(first) < 5:\n"
    "    part = os.read(0, 5 - len(first))\n"
    "    if not part: sys.exit(0)\n"
    "    first += part\n"
    "if first == b'exit!':\n"
    "    os.read(0, 1000)\n"
    "    sys.exit(3)\n"
    "if first == b'flood':\n"
    "    block = bytes(range(256)) * 8192\n"
    "    view = memoryview(block)\n"
    "    while view: view = view[os.write(1, view):]\n"
    "    sys.exit(0)\n"
    "os.write(1, first)\n" + ECHO
)
FLOOD = bytes(range(256)) * 8192


def _wait_for(server: ServerThread, count: int) -> list[SessionResult]:
    return server.wait_results(count)


def test_bad_input_ends_one_session_with_its_reason_and_the_server_keeps_serving(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="execsession")
    with ServerThread(python_child(DISPATCH)) as server:
        # 1. the socket is reset under a pending receive (nothing sent yet)
        with connect(server.address) as sock:
            server.wait_sessions(1)
            time.sleep(0.2)  # the session's receive is pending by now
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT_LINGER)
        first = _wait_for(server, 1)[0]
        assert first.reason == "client-disconnected"
        assert "client lost" in caplog.text

        # 2. the child exits while the client is still writing (its stdin breaks mid-write)
        with connect(server.address) as sock:
            def send() -> None:
                try:
                    sock.sendall(b"exit!" + b"z" * (8 * 1024 * 1024))
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            while sock.recv(65536):
                pass
            sender.join(WAIT)
        second = _wait_for(server, 2)[1]
        assert (second.reason, second.returncode) == ("exited", 3)
        assert "child stdin closed" in caplog.text

        # 3. the child writes 2 MiB and exits at once: its output is read from a pipe whose
        # writer is gone (reads completing at once, then end of data as an inline completion)
        assert exchange(server.address, b"flood") == FLOOD
        third = _wait_for(server, 3)[2]
        assert (third.reason, third.returncode) == ("exited", 0)

        # the server still serves
        assert exchange(server.address, b"still serving\n") == b"still serving\n"
        assert _wait_for(server, 4)[3].reason == "exited"
        port = getattr(server.loop, "port", None)
    if port is not None:
        assert port.stray_completions == 0


@pytest.mark.windows
def test_the_iocp_streams_use_skip_on_success_and_respect_an_unsafe_socket(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The IOCP backend's socket and pipes complete inline where skip is safe; a socket whose
    base-handle check fails (an LSP, simulated) keeps its packets, and relays alike."""
    import iocp.socket_io
    from execsession.backends import open_loop

    with ServerThread(python_child(ECHO)) as server:
        data = random.Random(7).randbytes(1024 * 1024)
        assert exchange(server.address, data) == data
        server.wait_results(1)
        loop = server.loop
        assert loop.inline_completions > 0  # type: ignore[attr-defined]
        assert loop.port.stray_completions == 0  # type: ignore[attr-defined]
    monkeypatch.setattr(iocp.socket_io, "skip_is_safe", lambda handle: False)
    loop = open_loop("iocp")
    streams: list[object] = []
    original = loop.socket_stream

    def spy(sock: socket.socket) -> object:
        stream = original(sock)
        streams.append(stream)
        return stream
    monkeypatch.setattr(loop, "socket_stream", spy)
    with ServerThread(python_child(ECHO), loop=loop) as server:
        assert exchange(server.address, data) == data
        server.wait_results(1)
        assert loop.port.stray_completions == 0  # type: ignore[attr-defined]
    assert streams and not streams[0].skip_on_success  # type: ignore[attr-defined]


@pytest.mark.windows
def test_inline_completions_cannot_starve_the_port() -> None:
    """200 streams whose every request completes inline (simulated: each callback counts an
    inline completion and schedules the next) and one packet waiting on the port: the loop
    waits on the port once its inline budget is spent, so the packet is delivered within the
    first iterations — without the budget only every 16th iteration would wait (DE6)."""
    from execsession.backends import open_loop
    from execsession.iocp_backend import INLINE_BUDGET
    from iocp import Operation

    loop = open_loop("iocp")
    ran = 0
    delivered_after: list[int] = []

    class Owner:
        def completed(self, operation: Operation) -> None:
            delivered_after.append(ran)

    def always_ready() -> None:
        nonlocal ran
        ran += 1
        loop.inline_completed()  # type: ignore[attr-defined]
        loop.call_soon(always_ready)

    try:
        for _ in range(200):
            loop.call_soon(always_ready)
        loop.port.post(9, operation=Operation(tag=Owner()))  # type: ignore[attr-defined]
        assert loop.run(until=lambda: bool(delivered_after), timeout=WAIT)
    finally:
        loop.close()
    assert delivered_after[0] <= 200 + INLINE_BUDGET  # one iteration's callbacks at most


@pytest.mark.windows
def test_iocp_streams_hand_out_views_that_never_change_and_reuse_few_buffers() -> None:
    """Two IOCP socket streams on one loop relay 6 MiB as a session does (reads delivered as
    views of the stream's buffers, queued a random while, written from where they are) to a
    peer that reads slowly: every view's bytes stay as read until written, the output is
    byte-exact, and the source stream keeps at most READ_BUFFERS buffers."""
    from execsession.backends import open_loop
    from execsession.chunks import ChunkQueue
    from execsession.iocp_streams import READ_BUFFERS, OverlappedStream

    rng = random.Random(11)
    data = rng.randbytes(6 * 1024 * 1024)
    loop = open_loop("iocp")
    a_ours, a_peer = socket.socketpair()
    b_ours, b_peer = socket.socketpair()
    b_ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
    received = bytearray()

    def send() -> None:
        send_in_random_pieces(a_peer, data, seed=12, largest=300_000, pause_chance=0.1,
                              pause=0.003)

    def receive() -> None:
        receive_in_random_pieces(b_peer, received, len(data), seed=13, largest=150_000,
                                 pause_chance=0.05, pause=0.01)

    queue = ChunkQueue()
    pairs: list[tuple[bytes | memoryview, bytes]] = []  # each queued chunk, and its bytes
    state = {"reading": False, "writing": False, "eof": False}
    counts = {"views": 0, "most": 0}
    source = target = None
    try:
        a_peer.settimeout(WAIT)
        b_peer.settimeout(WAIT)
        source = loop.socket_stream(a_ours)
        target = loop.socket_stream(b_ours)
        assert isinstance(source, OverlappedStream)

        def on_read(chunk: bytes | memoryview, error: BaseException | None) -> None:
            state["reading"] = False
            assert error is None
            if not chunk:
                state["eof"] = True
            else:
                counts["views"] += type(chunk) is memoryview
                queue.append(chunk)
                pairs.append((chunk, bytes(chunk)))
            pump()

        def on_written(count: int, error: BaseException | None) -> None:
            state["writing"] = False
            assert error is None
            for chunk, copy in pairs:  # every queued view still holds what was read
                assert bytes(chunk) == copy, "a view changed before it was written"
            queue.consume(count)
            while count:
                chunk, copy = pairs[0]
                if count < len(copy):
                    pairs[0] = (chunk[count:], copy[count:])
                    break
                count -= len(copy)
                pairs.pop(0)
            pump()

        def pump() -> None:
            assert source is not None and target is not None
            counts["most"] = max(counts["most"], len(source._reads))
            if not state["reading"] and not state["eof"] and len(queue) < 1024 * 1024:
                state["reading"] = True
                source.read(rng.choice([4096, 65536, 256 * 1024]), on_read)
            if queue and not state["writing"] and rng.random() < 0.8:
                state["writing"] = True
                target.write_chunk(queue.peek(rng.randint(1, 300_000)), on_written)
            elif queue and not state["writing"]:
                loop.call_later(0.001, pump)  # held a while longer, as a busy session would

        threads = [threading.Thread(target=send, daemon=True),
                   threading.Thread(target=receive, daemon=True)]
        for thread in threads:
            thread.start()
        loop.call_soon(pump)
        assert loop.run(until=lambda: state["eof"] and not queue and not state["writing"],
                        timeout=60)
        for thread in threads:
            thread.join(WAIT)
    finally:
        for stream in (source, target):
            if stream is not None:
                stream.close()
        loop.close()
        for sock in (a_ours, a_peer, b_ours, b_peer):
            sock.close()
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    assert counts["views"] > 0 and counts["most"] <= READ_BUFFERS


def _round_trips(address: tuple[str, int], seed: int, count: int,
                 outcome: dict[int, bool]) -> None:
    """``count`` round trips of random sizes (1 byte to 64 KiB), some pipelined two deep:
    each echo must come back whole and in order before (or right after) the next message."""
    rng = random.Random(seed)
    ok = True
    with connect(address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        done = 0
        while done < count and ok:
            depth = 2 if rng.random() < 0.25 else 1
            messages = [rng.randbytes(rng.choice((1, 7, 64, 1500, rng.randint(1, 65536))))
                        for _ in range(depth)]
            for message in messages:
                sock.sendall(message)
            expected = b"".join(messages)
            got = bytearray()
            while len(got) < len(expected):
                piece = sock.recv(len(expected) - len(got))
                if not piece:
                    break
                got += piece
            ok = bytes(got) == expected
            done += depth
        sock.shutdown(socket.SHUT_WR)
        ok = ok and sock.recv(1) == b""
    outcome[seed] = ok


def round_trip_clients(address: tuple[str, int], sessions: int, count: int) -> None:
    """``sessions`` clients at once, each making :func:`_round_trips` (``count``); every one
    must end with every echo exact and in order."""
    outcome: dict[int, bool] = {}
    threads = [threading.Thread(target=_round_trips, daemon=True,
                                args=(address, seed, count, outcome))
               for seed in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
        assert not thread.is_alive()
    assert outcome == {seed: True for seed in range(sessions)}


def test_round_trips_of_many_sessions_at_once_come_back_exact() -> None:
    """Eight sessions at once, each 150 round trips of random sizes, some pipelined: the
    requests of a round trip complete now inline, now pending (a write completion that leaves
    the pump nothing to do skips it: session.py), and every echo comes back byte-exact and in
    order, every session ends with its child's exit, and on the IOCP backend no stray packet
    came and nothing is left to the kernel."""
    orphans_before = _orphans()
    with ServerThread(python_child(ECHO)) as server:
        round_trip_clients(server.address, 8, 150)
        results = server.wait_results(8, timeout=WAIT * 2)
        port = getattr(server.loop, "port", None)
    assert sorted(result.reason for result in results) == ["exited"] * 8
    if port is not None:
        assert port.stray_completions == 0
        assert port.closed and _orphans() == orphans_before


@pytest.mark.windows
def test_small_writes_reuse_one_operation_only_once_it_completed() -> None:
    """Small ``bytes`` writes on an IOCP socket stream go through one reused operation (its
    ``OVERLAPPED`` and buffer): with a peer that reads slowly, some writes pend and others
    complete inline, every write starts only after the previous one completed, and the peer
    receives every byte once, in order."""
    from execsession.backends import open_loop
    from execsession.iocp_streams import SMALL_WRITE, OverlappedStream
    from iocp import WriteOperation

    rng = random.Random(21)
    chunks = [rng.randbytes(rng.choice((1, 64, 1000, SMALL_WRITE))) for _ in range(3000)]
    expected = b"".join(chunks)
    loop = open_loop("iocp")
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    received = bytearray()

    def receive() -> None:
        receive_in_random_pieces(peer, received, len(expected), seed=22, largest=20_000,
                                 pause_chance=0.02, pause=0.005)

    used: set[int] = set()
    state = {"next": 0, "pending_seen": 0}
    stream = None
    try:
        peer.settimeout(WAIT)
        stream = loop.socket_stream(ours)
        assert isinstance(stream, OverlappedStream)

        def write_next() -> None:
            assert stream is not None
            index = state["next"]
            if index == len(chunks):
                return
            state["next"] = index + 1
            stream.write_chunk(chunks[index], on_written)
            operation = stream._write_op
            if operation is not None:  # pending: the kernel owns it until its completion
                state["pending_seen"] += 1
                assert operation.pending and stream._small_write is None
                used.add(id(operation))

        def on_written(count: int, error: BaseException | None) -> None:
            assert error is None and count == len(chunks[state["next"] - 1])
            small = stream._small_write if stream is not None else None
            assert small is not None and type(small) is WriteOperation and not small.pending
            used.add(id(small))
            write_next()

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        write_next()
        assert loop.run(until=lambda: state["next"] == len(chunks) and (
            stream is not None and stream._write_op is None), timeout=WAIT * 3)
        receiver.join(WAIT)
    finally:
        if stream is not None:
            stream.close()
        loop.close()
        ours.close()
        peer.close()
    assert hashlib.sha256(received).digest() == hashlib.sha256(expected).digest()
    assert len(used) == 1  # one operation for every write
    assert state["pending_seen"] > 0  # and some of them pended
