"""CompletionPort: post, dequeue, batches, timeouts, wake-ups, operation lifetime, closing."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from iocp import (
    WAKEUP_KEY,
    CompletionPort,
    Operation,
    OperationBusyError,
    OperationState,
    PortClosedError,
)
from ntdll import NtStatusError
from ntdll import status as ntstatus

pytestmark = pytest.mark.windows


def test_post_and_dequeue_return_the_fields_posted(port: CompletionPort) -> None:
    port.post(key=7, status=ntstatus.STATUS_CANCELLED, information=1234)
    [completion] = port.dequeue(timeout=5)
    assert (completion.key, completion.status, completion.information) == (
        7, ntstatus.STATUS_CANCELLED, 1234)
    assert completion.operation is None and completion.apc_context == 0


def test_a_batch_of_many(port: CompletionPort) -> None:
    for index in range(1000):
        port.post(key=index, information=index * 3)
    seen: list[int] = []
    while len(seen) < 1000:
        batch = port.dequeue(timeout=5, max_entries=128)
        assert 0 < len(batch) <= 128
        seen.extend(completion.key for completion in batch)
        assert all(c.information == c.key * 3 for c in batch)
    assert sorted(seen) == list(range(1000))
    assert port.dequeue(timeout=0) == []


def test_timeout_returns_an_empty_batch(port: CompletionPort) -> None:
    started = time.monotonic()
    assert port.dequeue(timeout=0.2) == []
    assert time.monotonic() - started >= 0.15
    assert port.dequeue(timeout=0) == []


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_bad_timeout_is_refused(port: CompletionPort, bad: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        port.dequeue(timeout=bad)
    with pytest.raises(ValueError, match="max_entries"):
        port.dequeue(timeout=0, max_entries=0)


def test_wakeup_from_another_thread_ends_a_blocking_dequeue(port: CompletionPort) -> None:
    timer = threading.Timer(0.2, port.wakeup)
    timer.start()
    started = time.monotonic()
    batch = port.dequeue(timeout=10)
    timer.join()
    assert [completion.key for completion in batch] == [WAKEUP_KEY]
    assert time.monotonic() - started < 5


def test_a_dropped_operation_survives_gc_until_its_completion(port: CompletionPort) -> None:
    operation = Operation(tag="mine")
    reference = weakref.ref(operation)
    address = operation.apc_context
    port.post(key=3, information=99, operation=operation)
    assert operation.state is OperationState.PENDING
    with pytest.raises(OperationBusyError):
        port.post(key=3, operation=operation)  # re-issued while pending
    del operation
    gc.collect()
    assert reference() is not None, "the port must keep a pending operation alive"
    assert port.pending_count == 1
    [completion] = port.dequeue(timeout=5)
    assert completion.apc_context == address
    assert completion.operation is reference()
    assert completion.tag == "mine"
    assert completion.operation is not None
    assert completion.operation.state is OperationState.COMPLETED
    assert completion.operation.result() == 99
    assert port.pending_count == 0
    del completion
    gc.collect()
    assert reference() is None, "a completed operation is released by the port"


def test_a_completed_operation_can_be_issued_again(port: CompletionPort) -> None:
    operation = Operation()
    for round_number in range(3):
        port.post(key=round_number, information=round_number, operation=operation)
        [completion] = port.dequeue(timeout=5)
        assert completion.operation is operation
        assert operation.result() == round_number


def test_failed_operation_result_raises_the_status(port: CompletionPort) -> None:
    operation = Operation()
    port.post(status=ntstatus.STATUS_CANCELLED, operation=operation)
    port.dequeue(timeout=5)
    assert operation.cancelled
    with pytest.raises(NtStatusError, match="STATUS_CANCELLED"):
        operation.result()


def test_closed_port_raises_a_named_error() -> None:
    port = CompletionPort()
    port.close()
    port.close()  # idempotent
    assert port.closed
    for call in (lambda: port.post(), lambda: port.dequeue(timeout=0), port.wakeup,
                 lambda: port.associate(4, 1), lambda: port.post(operation=Operation())):
        with pytest.raises(PortClosedError, match="closed completion port"):
            call()


def test_invalid_port_handle_raises_status_invalid_handle() -> None:
    from ntdll import functions as nt
    from ntdll.structures import FILE_IO_COMPLETION_INFORMATION

    entries = (FILE_IO_COMPLETION_INFORMATION * 4)()
    with pytest.raises(NtStatusError) as raised:
        nt.NtRemoveIoCompletionEx(0x7FFC, entries, 0)
    assert raised.value.ntstatus == ntstatus.STATUS_INVALID_HANDLE
    assert getattr(raised.value, "winerror", None) == 6
    with pytest.raises(NtStatusError, match="STATUS_INVALID_HANDLE"):
        nt.NtSetIoCompletion(0x7FFC, 1, 0, 0, 0)


def test_close_cancels_and_drains_pending_operations() -> None:
    from iocp import create_pipe, start_read

    port = CompletionPort()
    read_end, write_end = create_pipe()
    with read_end, write_end:
        port.associate(read_end.value, 1)
        operation = start_read(port, read_end.value, 64)
        assert operation.pending
        port.close()
        assert operation.state is OperationState.COMPLETED
        assert operation.cancelled


def test_concurrent_posters_and_one_dequeuer(port: CompletionPort) -> None:
    per_thread = 500

    def poster(base: int) -> None:
        for index in range(per_thread):
            port.post(key=base + index, operation=Operation(tag=base + index))

    threads = [threading.Thread(target=poster, args=(n * per_thread,)) for n in range(4)]
    for thread in threads:
        thread.start()
    tags: list[object] = []
    deadline = time.monotonic() + 30
    while len(tags) < 4 * per_thread and time.monotonic() < deadline:
        tags.extend(c.tag for c in port.dequeue(timeout=1))
    for thread in threads:
        thread.join()
    assert sorted(tags) == list(range(4 * per_thread))  # type: ignore[type-var]
    assert port.pending_count == 0
