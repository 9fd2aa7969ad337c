"""iocp.SocketIO: WSARecv/WSASend completing inline (skip-on-success) or through the port."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
import warnings
from collections.abc import Iterator

import pytest

from iocp import (
    CompletionPort,
    Operation,
    OperationState,
    ReadOperation,
    SocketIO,
    skip_is_safe,
)

pytestmark = pytest.mark.windows

KEY = 5
WAIT = 10.0


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, peer): ``ours`` is read and written through the port, ``peer`` blocking."""
    ours, peer = socket.socketpair()
    peer.settimeout(WAIT)
    with ours, peer:
        yield ours, peer


def settle() -> None:
    time.sleep(0.05)  # loopback delivery is asynchronous


def wait_for(port: CompletionPort, operation: Operation) -> None:
    deadline = time.monotonic() + WAIT
    while operation.pending and time.monotonic() < deadline:
        port.dequeue(timeout=0.5)
    assert not operation.pending


def test_a_base_socket_is_safe_for_skip_on_success(
        port: CompletionPort, pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    assert skip_is_safe(ours.fileno())
    io = SocketIO(port, ours, KEY)
    assert io.skip_on_success


def test_a_receive_that_completes_at_once_queues_no_packet(
        port: CompletionPort, pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    io = SocketIO(port, ours, KEY)
    peer.sendall(b"ready data")
    settle()
    operation = io.read(100, tag="r")
    assert operation.state is OperationState.COMPLETED  # inline: no packet is coming
    assert operation.data == b"ready data"
    assert port.pending_count == 0
    assert port.dequeue(timeout=0.3) == []
    assert port.stray_completions == 0


def test_a_send_completes_at_once(port: CompletionPort,
                                  pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    io = SocketIO(port, ours, KEY)
    operation = io.write(b"x" * 1000, tag="w")
    assert operation.state is OperationState.COMPLETED
    assert operation.result() == 1000
    received = b""
    while len(received) < 1000:
        received += peer.recv(4096)
    assert received == b"x" * 1000
    assert port.dequeue(timeout=0.2) == [] and port.stray_completions == 0


def test_a_pending_receive_completes_through_the_port(
        port: CompletionPort, pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    io = SocketIO(port, ours, KEY)
    operation = io.read(100, tag="later")
    assert operation.pending
    peer.sendall(b"later")
    completions = port.dequeue(timeout=WAIT)
    assert [(c.key, c.tag) for c in completions] == [(KEY, "later")]
    assert operation.data == b"later"
    io.completed(operation)
    assert io.pending == 0


def test_the_port_notices_a_packet_for_a_request_completed_inline(
        port: CompletionPort, pair: tuple[socket.socket, socket.socket]) -> None:
    """If a handle queued packets for requests taken as completed inline (skip-on-success
    assumed but not set), the port would count each as a stray: the guard tests rely on."""
    ours, peer = pair
    io = SocketIO(port, ours, KEY, skip_on_success=False)
    io._skip = True  # lie: the flag is not set on the handle, so a packet is queued
    peer.sendall(b"data")
    settle()
    operation = io.read(100)
    assert operation.state is OperationState.COMPLETED
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        completions = port.dequeue(timeout=WAIT)
    assert len(completions) == 1 and completions[0].operation is None
    assert port.stray_completions == 1
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)


def test_a_handle_where_skip_is_unsafe_is_left_alone(
        port: CompletionPort, pair: tuple[socket.socket, socket.socket],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind a layered provider (simulated: the base-handle check says no) skip-on-success
    is not set, so a receive that finds data still completes through a packet."""
    import iocp.socket_io

    monkeypatch.setattr(iocp.socket_io, "skip_is_safe", lambda handle: False)
    ours, peer = pair
    io = SocketIO(port, ours, KEY)
    assert not io.skip_on_success
    peer.sendall(b"via the port")
    settle()
    operation = io.read(100, tag="r")
    assert operation.pending  # completed at once, but a packet is owed
    completions = port.dequeue(timeout=WAIT)
    assert [c.tag for c in completions] == ["r"]
    assert operation.data == b"via the port"
    assert port.stray_completions == 0


def test_end_of_data_reads_as_empty(port: CompletionPort,
                                    pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    io = SocketIO(port, ours, KEY)
    pending = io.read(100)
    peer.shutdown(socket.SHUT_WR)
    wait_for(port, pending)
    assert pending.succeeded and pending.data == b""
    again = io.read(100, operation=pending)  # reuses the completed operation's buffer
    assert again is pending and again.state is OperationState.COMPLETED and again.data == b""


def test_a_socket_closed_under_a_pending_receive_completes_it_with_an_error(
        port: CompletionPort) -> None:
    ours, peer = socket.socketpair()
    with peer:
        io = SocketIO(port, ours, KEY)
        operation = io.read(100, tag="r")
        assert operation.pending
        ours.close()  # the kernel completes (cancels) what is pending on it
        wait_for(port, operation)
        assert not operation.succeeded
    assert port.pending_count == 0 and port.stray_completions == 0


def test_a_peer_reset_fails_a_pending_receive(port: CompletionPort,
                                              pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    io = SocketIO(port, ours, KEY)
    operation = io.read(100)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    peer.close()
    wait_for(port, operation)
    assert not operation.succeeded or operation.data == b""


def test_close_cancels_what_is_pending(port: CompletionPort,
                                       pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    io = SocketIO(port, ours, KEY)
    operation = io.read(100)
    io.close()
    wait_for(port, operation)
    assert operation.cancelled
    with pytest.raises(ValueError, match="closed socket"):
        io.read(100)


def test_bad_sizes_are_refused_before_any_call(port: CompletionPort,
                                               pair: tuple[socket.socket, socket.socket]) -> None:
    io = SocketIO(port, pair[0], KEY)
    with pytest.raises(ValueError, match="read size"):
        io.read(0)
    with pytest.raises(ValueError, match="write size"):
        io.write(b"")
    assert port.pending_count == 0


def test_random_chunks_both_ways_keep_every_byte(port: CompletionPort) -> None:
    """4 MiB each way in random chunk sizes, reads and writes completing inline and pending
    interleaved: both hashes equal, both kinds of completion seen, no stray packet."""
    rng = random.Random(10)
    size = 4 * 1024 * 1024
    outgoing = rng.randbytes(size)
    incoming = rng.randbytes(size)
    ours, peer = socket.socketpair()
    peer.settimeout(WAIT)
    echoed = bytearray()

    def peer_side() -> None:
        peer_rng = random.Random(11)
        sent = 0
        while sent < size:  # bursts with pauses: our reads find data, or wait for it
            chunk = peer_rng.randint(1, 200_000)
            peer.sendall(incoming[sent:sent + chunk])
            sent += chunk
            if peer_rng.random() < 0.5:
                time.sleep(0.01)

    def peer_reader() -> None:
        while len(echoed) < size:
            data = peer.recv(1 << 16)
            if not data:
                break
            echoed.extend(data)

    with ours, peer:
        io = SocketIO(port, ours, KEY)
        threads = [threading.Thread(target=peer_side), threading.Thread(target=peer_reader)]
        received = bytearray()
        sent = 0
        inline = pending = 0
        first = io.read(65536, tag="r")
        assert first.pending  # nothing was sent yet: this one waits for the port
        read_op: ReadOperation | None = first
        pending += 1
        for thread in threads:
            thread.start()
        write_op = None
        deadline = time.monotonic() + 120
        while (len(received) < size or sent < size) and time.monotonic() < deadline:
            if len(received) < size and (read_op is None or not read_op.pending):
                read_op = io.read(rng.randint(1, 300_000), tag="r", operation=None)
                if read_op.state is OperationState.COMPLETED:
                    inline += 1
                    received += read_op.data
                else:
                    pending += 1
            if sent < size and (write_op is None or not write_op.pending):
                if write_op is not None and write_op.tag == "w-pending":
                    sent += write_op.result()
                    write_op = None
                chunk = outgoing[sent:sent + rng.randint(1, 300_000)]
                if chunk:
                    write_op = io.write(chunk, tag="w-pending")
                    if write_op.state is OperationState.COMPLETED:
                        inline += 1
                        sent += write_op.result()
                        write_op = None
                    else:
                        pending += 1
            for completion in port.dequeue(timeout=0 if inline % 3 else 0.01):
                if completion.tag == "r":
                    assert isinstance(completion.operation, ReadOperation)
                    received += completion.operation.data
        if write_op is not None:
            wait_for(port, write_op)
            sent += write_op.result()
        for thread in threads:
            thread.join(WAIT)
    assert hashlib.sha256(received).digest() == hashlib.sha256(incoming).digest()
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(outgoing).digest()
    assert inline > 0 and pending > 0
    assert port.stray_completions == 0 and port.pending_count == 0


# -- ConnectEx ------------------------------------------------------------------------------
def _connect(port: CompletionPort, io: SocketIO, address: tuple[str, int]) -> Operation:
    operation = io.connect(socket.AF_INET, address, tag="connect")
    if operation.pending:
        wait_for(port, operation)
    return operation


def test_connect_completes_on_the_port_and_the_socket_then_works(port: CompletionPort) -> None:
    """``ConnectEx`` on a bound socket: completed (inline or through the port), then
    ``SO_UPDATE_CONNECT_CONTEXT`` makes it a normal connected socket: its peer name, and a
    receive and a send on the same ``SocketIO``."""
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as ours:
        ours.bind(("127.0.0.1", 0))
        io = SocketIO(port, ours, KEY)
        operation = _connect(port, io, listener.getsockname())
        io.connect_result(operation)
        assert operation.succeeded
        ours.setsockopt(socket.SOL_SOCKET, 0x7010, b"")  # SO_UPDATE_CONNECT_CONTEXT
        assert ours.getpeername() == listener.getsockname()
        peer, _ = listener.accept()
        with peer:
            peer.settimeout(WAIT)
            sent = io.write(b"over ConnectEx")
            if sent.pending:
                wait_for(port, sent)
            assert peer.recv(100) == b"over ConnectEx"
            peer.sendall(b"back")
            settle()
            received = io.read(100)
            if received.pending:
                wait_for(port, received)
            assert received.data == b"back"
    assert port.pending_count == 0 and port.stray_completions == 0


def test_a_refused_connect_raises_connection_refused(port: CompletionPort) -> None:
    """Nobody listening: the completion fails, and ``connect_result`` raises what the
    Proactor loop raises (``ConnectionRefusedError``, the WSA error Winsock maps it to)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = listener.getsockname()
    with socket.socket() as ours:
        ours.bind(("127.0.0.1", 0))
        io = SocketIO(port, ours, KEY)
        operation = _connect(port, io, address)
        assert not operation.succeeded
        with pytest.raises(ConnectionRefusedError):
            io.connect_result(operation)
    assert port.pending_count == 0


def test_connect_refuses_an_unbound_socket_and_a_name_before_any_request(
        port: CompletionPort) -> None:
    """``ConnectEx`` needs a bound socket: the call fails at once (an ``OSError``, no request
    left pending); a host name (not a numeric address) is refused before any call."""
    with socket.socket() as ours:
        io = SocketIO(port, ours, KEY)
        with pytest.raises(OSError):
            io.connect(socket.AF_INET, ("127.0.0.1", 9))
        with pytest.raises(ValueError, match="numeric"):
            io.connect(socket.AF_INET, ("localhost", 9))
    assert port.pending_count == 0 and port.stray_completions == 0
