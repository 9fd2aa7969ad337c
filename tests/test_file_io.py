"""Overlapped ReadFile/WriteFile through a port, on pipes and files."""

from __future__ import annotations

import ctypes
import hashlib
import os
import tempfile

import pytest

from iocp import (
    CompletionPort,
    OperationBusyError,
    ReadOperation,
    WriteOperation,
    create_pipe,
    start_read,
    start_write,
)
from ntdll import NtStatusError

pytestmark = pytest.mark.windows

READ_KEY, WRITE_KEY = 1, 2


def test_pipe_round_trip(port: CompletionPort) -> None:
    read_end, write_end = create_pipe()
    with read_end, write_end:
        port.associate(read_end.value, READ_KEY)
        port.associate(write_end.value, WRITE_KEY)
        read = start_read(port, read_end.value, 100, tag="r")
        with pytest.raises(OperationBusyError):
            read.buffer  # noqa: B018 - the kernel owns it while pending
        write = start_write(port, write_end.value, b"hello, pipe", tag="w")
        done = {c.tag: c for c in port.dequeue(timeout=5)}
        while len(done) < 2:
            done.update({c.tag: c for c in port.dequeue(timeout=5)})
        assert done["w"].key == WRITE_KEY and write.result() == 11
        assert done["r"].key == READ_KEY and done["r"].information == 11
        assert read.data == b"hello, pipe"


def test_streaming_four_mebibytes_keeps_every_byte_in_order(port: CompletionPort) -> None:
    payload = os.urandom(4 * 1024 * 1024)
    read_end, write_end = create_pipe(buffer_size=64 * 1024)
    received = bytearray()
    with read_end, write_end:
        port.associate(read_end.value, READ_KEY)
        port.associate(write_end.value, WRITE_KEY)
        chunk = 256 * 1024
        offset = 0
        write: WriteOperation | None = start_write(port, write_end.value, payload[:chunk])
        offset = chunk
        read = start_read(port, read_end.value, 64 * 1024)
        while len(received) < len(payload):
            for completion in port.dequeue(timeout=10):
                assert completion.operation is not None, "timed out"
                if completion.operation is read:
                    received += read.data
                    read = start_read(port, read_end.value, 64 * 1024, operation=read)
                elif completion.operation is write:
                    # A pipe write completes only once all of it is written.
                    assert write.result() == min(chunk, len(payload) - (offset - chunk))
                    if offset < len(payload):
                        write = start_write(port, write_end.value, payload[offset:offset + chunk])
                        offset += chunk
                    else:
                        write = None
        port.cancel(read)
        port.dequeue(timeout=5)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def test_cancel_a_pending_read(port: CompletionPort) -> None:
    read_end, write_end = create_pipe()
    with read_end, write_end:
        port.associate(read_end.value, READ_KEY)
        read = start_read(port, read_end.value, 10)
        assert port.cancel(read) is True
        [completion] = port.dequeue(timeout=5)
        assert completion.operation is read and read.cancelled
        assert port.cancel(read) is False  # nothing pending any more


def test_end_of_data_when_the_writer_closes(port: CompletionPort) -> None:
    read_end, write_end = create_pipe()
    with read_end:
        port.associate(read_end.value, READ_KEY)
        read = start_read(port, read_end.value, 10)
        write_end.close()
        [completion] = port.dequeue(timeout=5)
        assert completion.operation is read
        assert read.at_end and read.data == b""
        # Reading again fails at once: the pipe is broken and no completion is queued.
        with pytest.raises(BrokenPipeError, match="ReadFile failed: Win32 error 109"):
            start_read(port, read_end.value, 10)
        assert port.pending_count == 0


def test_write_to_a_closed_pipe_raises_broken_pipe(port: CompletionPort) -> None:
    read_end, write_end = create_pipe()
    with write_end:
        port.associate(write_end.value, WRITE_KEY)
        read_end.close()
        with pytest.raises(OSError, match="WriteFile failed") as raised:
            start_write(port, write_end.value, b"x")
        # ERROR_BROKEN_PIPE or ERROR_NO_DATA
        assert getattr(raised.value, "winerror", None) in (109, 232)
        assert port.pending_count == 0


def test_file_read_and_write_at_offsets(port: CompletionPort) -> None:
    from ntdll import functions as nt

    generic_read_write = 0x80000000 | 0x40000000
    file_flag_overlapped = 0x40000000
    create_always = 2
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "data.bin")
        from iocp import Handle

        with Handle(nt.CreateFileW(path, generic_read_write, 0, create_always,
                                   file_flag_overlapped), path) as handle:
            port.associate(handle.value, 5)
            start_write(port, handle.value, b"0123456789")
            port.dequeue(timeout=5)
            write = start_write(port, handle.value, b"AB", offset=4)
            port.dequeue(timeout=5)
            assert write.result() == 2
            read = start_read(port, handle.value, 6, offset=2)
            port.dequeue(timeout=5)
            assert read.data == b"23AB67"


def test_bad_arguments_are_refused(port: CompletionPort) -> None:
    read_end, write_end = create_pipe()
    with read_end, write_end:
        with pytest.raises(ValueError, match="read size"):
            start_read(port, read_end.value, 0)
        with pytest.raises(ValueError, match="write size"):
            start_write(port, write_end.value, b"")
        small = ReadOperation(None, None)
        with pytest.raises(ValueError, match="buffer is smaller"):
            start_read(port, read_end.value, 10, operation=small)


def test_invalid_handle_raises_and_leaves_nothing_pending(port: CompletionPort) -> None:
    with pytest.raises(OSError, match="ReadFile failed: Win32 error 6"):
        start_read(port, 0x7FFC, 10)
    with pytest.raises(NtStatusError, match="STATUS_INVALID_HANDLE"):
        buffer = ctypes.create_string_buffer(32)
        port.device_io_control(0x7FFC, 0x12024, buffer, ReadOperation(None, buffer))
    assert port.pending_count == 0
    with pytest.raises(OSError, match="CreateIoCompletionPort failed: Win32 error 6"):
        port.associate(0x7FFC, 1)
