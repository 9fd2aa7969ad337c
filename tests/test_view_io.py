"""Zero-copy relaying in iocp: ReadOperation.view() and OverlappedIO.write_from().

A read's bytes are handed out as a view of the read's own buffer and written from there; the
read refuses to be issued again while a view, a slice of one or a write from one is alive
(the kernel would write into bytes still in use), whatever exception arrives in between.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import random
import socket
import threading
import time
from typing import Any

import pytest

from iocp import (
    CompletionPort,
    OperationBusyError,
    OperationState,
    PipeIO,
    ReadOperation,
    SocketIO,
    ViewWriteOperation,
    WriteOperation,
    create_pipe,
)
from tests.support import receive_in_random_pieces, send_in_random_pieces

pytestmark = pytest.mark.windows

WAIT = 10.0


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt arriving right after the kernel call returned."""


def pipes(port: CompletionPort, key: int, buffer_size: int = 64 * 1024) -> tuple[PipeIO, PipeIO]:
    read_end, write_end = create_pipe(buffer_size=buffer_size)
    return PipeIO(port, read_end, key), PipeIO(port, write_end, key + 1)


def read_all(port: CompletionPort, reader: PipeIO, size: int) -> bytes:
    received = bytearray()
    deadline = time.monotonic() + WAIT
    while len(received) < size and time.monotonic() < deadline:
        read = reader.read(65536)
        while read.pending and time.monotonic() < deadline:
            port.dequeue(timeout=0.5)
        received += read.data
    return bytes(received)


def wait_for(port: CompletionPort, *operations: Any) -> None:
    deadline = time.monotonic() + WAIT
    while any(op.pending for op in operations) and time.monotonic() < deadline:
        port.dequeue(timeout=0.5)
    assert not any(op.pending for op in operations)


def test_a_view_is_the_bytes_read_and_blocks_reuse_while_it_lives(port: CompletionPort) -> None:
    source, sink = pipes(port, 1)
    try:
        sink.write(b"first bytes")
        read = source.read(100)
        assert read.state is OperationState.COMPLETED
        view = read.view()
        assert isinstance(view, memoryview) and bytes(view) == b"first bytes"
        part = view[6:]
        del view
        with pytest.raises(OperationBusyError, match="view"):
            source.read(100, operation=read)  # a slice still shows the buffer
        assert read.views_alive
        del part
        assert not read.views_alive
        sink.write(b"second")
        again = source.read(100, operation=read)  # nothing shows it: reused
        assert again is read and read.view() == b"second"
        assert port.pending_count == 0 and port.stray_completions == 0
    finally:
        source.close()
        sink.close()


def test_write_from_sends_the_read_buffer_itself(port: CompletionPort) -> None:
    """No copy: the write operation's buffer is the read's; bytes and slices that start
    further in are copied instead (a plain WriteOperation); a completed view write lets go
    of the read's buffer and never lends it to another write."""
    source, sink = pipes(port, 1)
    target, drain = pipes(port, 3)
    try:
        data = random.Random(5).randbytes(50_000)
        sink.write(data)
        read = source.read(65536)
        view = read.view()
        write = drain.write_from(view)
        assert type(write) is ViewWriteOperation and write.state is OperationState.COMPLETED
        assert write.result() == 50_000
        assert write.buffer is None  # completed: the read's buffer is the read's again
        assert target.read(65536).data == data
        copied = drain.write_from(view[10:20])  # starts further in: copied
        assert type(copied) is WriteOperation and copied.result() == 10
        from_bytes = drain.write_from(b"plain")
        assert type(from_bytes) is WriteOperation
        assert target.read(100).data == data[10:20] + b"plain"
        reuse = drain.write(b"xyz", operation=write)  # never into the read's buffer
        assert reuse is not write and target.read(10).data == b"xyz"
        del view
        assert not read.views_alive
        assert port.pending_count == 0 and port.stray_completions == 0
    finally:
        for io in (source, sink, target, drain):
            io.close()


def test_a_pending_write_from_owns_the_read_buffer_through_an_exception(
        port: CompletionPort, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write from a view that is pending when an exception arrives right after the kernel
    call: the caller loses every reference, yet the read's buffer stays alive (the port holds
    the write, the write holds the buffer), the read refuses to be issued into it, and the
    bytes the kernel sends are the ones read."""
    source, sink = pipes(port, 1)
    target, drain = pipes(port, 3, buffer_size=4096)
    try:
        data = random.Random(6).randbytes(60_000)
        sink.write(data)
        read = source.read(65536)
        assert read.state is OperationState.COMPLETED and read.information == 60_000
        real = PipeIO._write_call

        def interrupted(*args: Any) -> int:
            real(*args)
            raise Interrupted("after WriteFile")

        monkeypatch.setattr(PipeIO, "_write_call", staticmethod(interrupted))
        with pytest.raises(Interrupted):
            drain.write_from(read.view())
        monkeypatch.undo()
        gc.collect()
        assert port.pending_count == 1  # the write: owned by the port, not forgotten
        assert read.views_alive  # through the pending write
        with pytest.raises(OperationBusyError):
            source.read(65536, operation=read)
        received = read_all(port, target, 60_000)
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
        completions = port.dequeue(timeout=WAIT)
        while port.pending_count and completions is not None:
            completions += port.dequeue(timeout=1)
        assert port.pending_count == 0
        assert not read.views_alive  # the write completed and let go of the buffer
        sink.write(b"next")
        assert source.read(100, operation=read).data == b"next"
        assert port.stray_completions == 0
    finally:
        for io in (source, sink, target, drain):
            io.close()


def test_views_relayed_at_random_keep_every_byte(port: CompletionPort) -> None:
    """Random read sizes, views held for a random while (as a session queues chunks) and
    written out through a socket whose peer reads slowly (pending and inline requests
    interleaved): no view's bytes ever change while it lives, and what comes out is what
    went in."""
    rng = random.Random(7)
    data = rng.randbytes(4 * 1024 * 1024)
    a_ours, a_peer = socket.socketpair()
    b_ours, b_peer = socket.socketpair()
    received = bytearray()

    def send() -> None:  # pauses leave the socket empty: the next receive is pending
        send_in_random_pieces(a_peer, data, seed=8, largest=200_000, pause_chance=0.1,
                              pause=0.005)

    def receive() -> None:  # pauses fill the socket: the next send is pending
        receive_in_random_pieces(b_peer, received, len(data), seed=9, largest=100_000,
                                 pause_chance=0.1, pause=0.01)

    with a_ours, a_peer, b_ours, b_peer:
        a_peer.settimeout(WAIT)
        b_peer.settimeout(WAIT)
        b_ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        b_peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        source = SocketIO(port, a_ours, 1)
        target = SocketIO(port, b_ours, 2)
        threads = [threading.Thread(target=send, daemon=True),
                   threading.Thread(target=receive, daemon=True)]
        for thread in threads:
            thread.start()
        reads: list[ReadOperation] = []
        queued: list[tuple[memoryview, bytes]] = []
        read: ReadOperation | None = None
        write: WriteOperation | None = None
        at_end = False
        inline = pending = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if read is None and not at_end and len(queued) < 3:
                size = rng.randint(1, 70_000)
                free = [op for op in reads if not op.views_alive
                        and op.buffer is not None and ctypes.sizeof(op.buffer) >= size]
                read = source.read(size, operation=free[0] if free else None)
                if not free:
                    reads = [*reads[-3:], read]
                inline += read.state is OperationState.COMPLETED
                pending += read.pending
            if read is not None and not read.pending:
                view = read.view()
                if not view:
                    at_end = True
                else:
                    queued.append((view, bytes(view)))
                read = None
            if write is not None and not write.pending:
                count = write.result()
                view, copy = queued[0]
                assert view == copy, "a view's bytes changed while it lived"
                if count < len(view):
                    queued[0] = (view[count:], copy[count:])
                else:
                    queued.pop(0)
                write = None
            held = rng.random() < 0.3  # keep the queue a while longer
            if write is None and queued and not held:
                write = target.write_from(queued[0][0])
                inline += write.state is OperationState.COMPLETED
                pending += write.pending
            if at_end and not queued and write is None:
                break
            if (read is None or read.pending) and (write is None or write.pending):
                port.dequeue(timeout=0 if held else 0.5)
        for thread in threads:
            thread.join(WAIT)
        assert at_end and not queued
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
        assert inline and pending  # both kinds of completion were exercised
        source.close()
        target.close()
        assert port.stray_completions == 0
