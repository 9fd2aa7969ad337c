"""iocp.PipeIO: ReadFile/WriteFile on overlapped pipes, inline (skip-on-success) or pending."""

from __future__ import annotations

import hashlib
import random
import time

import pytest

from iocp import CompletionPort, OperationState, PipeIO, create_pipe

pytestmark = pytest.mark.windows

READ_KEY, WRITE_KEY = 1, 2
WAIT = 10.0


def pipes(port: CompletionPort, buffer_size: int = 64 * 1024) -> tuple[PipeIO, PipeIO]:
    read_end, write_end = create_pipe(buffer_size=buffer_size)
    return PipeIO(port, read_end, READ_KEY), PipeIO(port, write_end, WRITE_KEY)


def test_skip_on_success_is_honoured_for_pipes(port: CompletionPort) -> None:
    """Wine 8 too: a write with room and a read with data complete at once, no packet."""
    reader, writer = pipes(port)
    try:
        assert reader.skip_on_success and writer.skip_on_success
        write = writer.write(b"pipe data")
        assert write.state is OperationState.COMPLETED and write.result() == 9
        read = reader.read(100)
        assert read.state is OperationState.COMPLETED and read.data == b"pipe data"
        assert port.dequeue(timeout=0.3) == []
        assert port.stray_completions == 0 and port.pending_count == 0
    finally:
        reader.close()
        writer.close()


def test_a_read_on_an_empty_pipe_is_pending(port: CompletionPort) -> None:
    reader, writer = pipes(port)
    try:
        read = reader.read(100, tag="r")
        assert read.pending
        writer.write(b"late")
        completions = port.dequeue(timeout=WAIT)
        assert [(c.key, c.tag) for c in completions] == [(READ_KEY, "r")]
        assert read.data == b"late"
    finally:
        reader.close()
        writer.close()


def test_a_write_larger_than_the_pipe_is_pending_until_read(port: CompletionPort) -> None:
    data = random.Random(1).randbytes(300_000)
    reader, writer = pipes(port, buffer_size=64 * 1024)
    try:
        write = writer.write(data, tag="w")
        assert write.pending
        received = bytearray()
        deadline = time.monotonic() + WAIT
        while len(received) < len(data) and time.monotonic() < deadline:
            read = reader.read(65536, tag="r")
            if read.state is OperationState.COMPLETED:
                received += read.data
                continue
            while read.pending and time.monotonic() < deadline:
                port.dequeue(timeout=1)
            received += read.data
        while write.pending and time.monotonic() < deadline:
            port.dequeue(timeout=1)
        assert write.result() == len(data)
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
        assert port.stray_completions == 0
    finally:
        reader.close()
        writer.close()


def test_end_of_data_after_the_writer_closed_is_an_inline_completion(
        port: CompletionPort) -> None:
    """Data still in the pipe is read inline; then ERROR_BROKEN_PIPE at issue is end of data,
    completed at once with nothing queued (the "pipe broken during an inline completion")."""
    reader, writer = pipes(port)
    try:
        writer.write(b"last words")
        writer.close()
        read = reader.read(100)
        assert read.state is OperationState.COMPLETED and read.data == b"last words"
        end = reader.read(100, operation=read)
        assert end.state is OperationState.COMPLETED and end.at_end and end.data == b""
        assert port.dequeue(timeout=0.2) == [] and port.stray_completions == 0
    finally:
        reader.close()


def test_a_pending_read_ends_when_the_writer_closes(port: CompletionPort) -> None:
    reader, writer = pipes(port)
    try:
        read = reader.read(100)
        assert read.pending
        writer.close()
        port.dequeue(timeout=WAIT)
        assert read.at_end and read.data == b""
    finally:
        reader.close()


def test_a_write_to_a_closed_reader_raises_broken_pipe(port: CompletionPort) -> None:
    reader, writer = pipes(port)
    reader.close()
    try:
        with pytest.raises(BrokenPipeError):
            writer.write(b"nobody listens")
        assert port.pending_count == 0
    finally:
        writer.close()


def test_close_cancels_a_pending_read_and_closes_the_handle(port: CompletionPort) -> None:
    reader, writer = pipes(port)
    read = reader.read(100)
    reader.close()
    deadline = time.monotonic() + WAIT
    while read.pending and time.monotonic() < deadline:
        port.dequeue(timeout=1)
    assert not read.pending and not read.succeeded
    with pytest.raises(ValueError, match="closed pipe"):
        reader.read(100)
    writer.close()


def test_a_pending_write_owns_its_data(port: CompletionPort) -> None:
    """The operation owns the memory the kernel reads until the write is done, whatever the
    caller drops (checked by reading it back after a collection, while the write was still
    pending)."""
    import gc

    reader, writer = pipes(port, buffer_size=64 * 1024)
    try:
        data = random.Random(3).randbytes(500_000)
        expected = hashlib.sha256(data).digest()
        write = writer.write(data, tag="w")
        assert write.pending
        del data
        gc.collect()
        received = bytearray()
        deadline = time.monotonic() + WAIT
        while len(received) < 500_000 and time.monotonic() < deadline:
            read = reader.read(65536)
            while read.pending and time.monotonic() < deadline:
                port.dequeue(timeout=1)
            received += read.data
        while write.pending and time.monotonic() < deadline:
            port.dequeue(timeout=1)
        assert write.result() == 500_000
        assert hashlib.sha256(received).digest() == expected
    finally:
        reader.close()
        writer.close()


def test_a_completed_write_lends_its_buffer_to_the_next(port: CompletionPort) -> None:
    from iocp import OperationBusyError

    reader, writer = pipes(port, buffer_size=64 * 1024)
    try:
        first = writer.write(b"a" * 1000)
        assert first.state is OperationState.COMPLETED
        second = writer.write(b"b" * 10, operation=first)
        assert second is first and second.result() == 10
        assert reader.read(2000).data == b"a" * 1000 + b"b" * 10
        big = writer.write(bytes(300_000))  # larger than the pipe: pending
        assert big.pending
        with pytest.raises(OperationBusyError):
            writer.write(b"c", operation=big)  # the kernel still reads its buffer
        bigger = writer.write(b"d" * 2000, operation=first)  # too small: a new buffer
        assert bigger is not first
        reader.close()  # ends the pending write (broken pipe)
        deadline = time.monotonic() + WAIT
        while (big.pending or bigger.pending) and time.monotonic() < deadline:
            port.dequeue(timeout=1)
        assert not big.pending and not bigger.pending
    finally:
        reader.close()
        writer.close()
