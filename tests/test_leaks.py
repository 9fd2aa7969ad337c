"""Bad input raises its named error and leaks nothing: the process handle count stays flat."""

from __future__ import annotations

import ctypes
import gc
import socket

import pytest

from afd import AfdHelperHandle, AfdPollEvents, NotASocketError, base_socket_handle
from iocp import CompletionPort, PortClosedError, create_pipe, start_read, start_write
from ntdll import NtStatusError
from ntdll import functions as nt

from .support import process_handle_count

pytestmark = pytest.mark.windows

ROUNDS = 100
INVALID = 0x7FFC  # a handle value no object has in this process


def _bad_inputs_once(port: CompletionPort, listener: socket.socket) -> None:
    with pytest.raises(NtStatusError, match="STATUS_INVALID_HANDLE"):
        nt.NtClose(INVALID)
    with pytest.raises(OSError, match="CreateIoCompletionPort"):
        port.associate(INVALID, 1)
    with pytest.raises(OSError, match="ReadFile"):
        start_read(port, INVALID, 16)
    event = nt.CreateEventW(True, False)
    try:
        with pytest.raises(NotASocketError):
            base_socket_handle(event)
    finally:
        nt.CloseHandle(event)
    closed = socket.socket()
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        base_socket_handle(closed)
    dead = CompletionPort()
    dead.close()
    with pytest.raises(PortClosedError):
        dead.dequeue(timeout=0)
    with AfdHelperHandle(port, 2) as helper:
        with pytest.raises(NtStatusError):
            helper.poll([(INVALID, AfdPollEvents.RECEIVE)])
        poll = helper.poll([(base_socket_handle(listener), AfdPollEvents.ACCEPT)])
        helper.cancel(poll)
        port.dequeue(timeout=5)
    read_end, write_end = create_pipe()
    with write_end:
        port.associate(write_end.value, 3)
        read_end.close()
        with pytest.raises(OSError):
            start_write(port, write_end.value, b"x")
    assert port.pending_count == 0


def test_bad_input_leaks_no_handle(port: CompletionPort, listener: socket.socket) -> None:
    _bad_inputs_once(port, listener)  # warm-up: lazily created objects (winsock, ...)
    # Counted after a collection: a port holds a lock, and a lock a semaphore handle on
    # Windows (E7); the exceptions pytest.raises keeps reach ports through their tracebacks'
    # frames, so those handles go when the collector runs, not at once.
    gc.collect()
    before = process_handle_count()
    assert before > 0
    for _ in range(ROUNDS):
        _bad_inputs_once(port, listener)
    gc.collect()
    after = process_handle_count()
    assert after - before <= 2, f"handle count grew from {before} to {after}"


def test_port_and_pipe_lifecycles_leak_no_handle() -> None:
    def once() -> None:
        with CompletionPort() as port:
            read_end, write_end = create_pipe()
            with read_end, write_end:
                port.associate(read_end.value, 1)
                read = start_read(port, read_end.value, 8)
            # closing the pipe ends the read; the port drains it on close
        assert read.state.value == "completed"

    once()
    before = process_handle_count()
    for _ in range(ROUNDS):
        once()
    assert process_handle_count() - before <= 2


def test_handle_count_sees_a_new_handle() -> None:
    # The counter itself must work, or the leak tests above prove nothing.
    before = process_handle_count()
    events = [nt.CreateEventW(True, False) for _ in range(10)]
    try:
        assert process_handle_count() - before == 10
    finally:
        for event in events:
            nt.CloseHandle(event)
    assert process_handle_count() == before
    assert ctypes.sizeof(ctypes.c_void_p) == 8
