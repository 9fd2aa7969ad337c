"""CompletionPort: post, dequeue, batches, timeouts, wake-ups, operation lifetime, closing."""

from __future__ import annotations

import ctypes
import gc
import threading
import time
import weakref
from typing import Any

import pytest

from iocp import (
    PACKET,
    WAKEUP_KEY,
    Completion,
    CompletionPort,
    IssueResult,
    Operation,
    OperationBusyError,
    OperationState,
    PortClosedError,
    ReadOperation,
    create_pipe,
    relative_timeout,
    start_read,
    start_write,
)
from ntdll import NtStatusError, speedups
from ntdll import functions as nt
from ntdll import status as ntstatus
from ntdll.structures import OVERLAPPED

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


def test_a_dropped_read_survives_gc_until_the_kernel_writes_it(port: CompletionPort) -> None:
    """A real read (the kernel writes its buffer and status block later, unlike a post): with
    every reference of ours dropped and the collector run, the port still owns the memory, and
    the bytes the kernel wrote arrive intact in the operation the completion names."""
    read_end, write_end = create_pipe()
    with read_end, write_end:
        port.associate(read_end.value, 5)
        port.associate(write_end.value, 6)
        operation = start_read(port, read_end.value, 64, tag="mine")
        reference = weakref.ref(operation)
        address = operation.apc_context
        with pytest.raises(OperationBusyError):
            operation.buffer  # noqa: B018 - the kernel owns it
        del operation
        for _ in range(3):
            gc.collect()
            _churn = [bytearray(64) for _ in range(1000)]  # reuse freed memory, if any
        assert reference() is not None, "the port must keep a pending operation alive"
        assert port.pending_count == 1
        start_write(port, write_end.value, b"written by the kernel later")
        completions: list[Completion] = []
        while len(completions) < 2:
            completions += port.dequeue(timeout=5)
        [read] = [c for c in completions if c.key == 5]
        assert read.apc_context == address and read.tag == "mine"
        assert isinstance(read.operation, ReadOperation)
        assert read.operation.data == b"written by the kernel later"
        assert port.pending_count == 0
        del read, completions
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


# -- exceptions while the kernel owns memory (issue 11, part 1) ------------------------------------
class Interrupted(BaseException):
    """Stands for KeyboardInterrupt (or any exception a signal handler raises) arriving right
    after a kernel call returned, before the caller saw the result."""


def interrupt_after_first_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
    """Wrap ``owner.name`` so its first call runs for real and then raises
    :class:`Interrupted`; returns the list the real results are appended to."""
    real = getattr(owner, name)
    results: list[Any] = []

    def hooked(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        results.append(result)
        if len(results) == 1:
            raise Interrupted(name)
        return result

    monkeypatch.setattr(owner, name, hooked)
    return results


def hook_the_dequeue(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The kernel call of this leg's dequeue: ctypes, or the C speedups."""
    if speedups.native is not None:
        return interrupt_after_first_call(monkeypatch, speedups.native, "remove_into")
    return interrupt_after_first_call(monkeypatch, nt, "NtRemoveIoCompletionEx")


def test_an_exception_after_the_dequeue_loses_no_completion(
        port: CompletionPort, monkeypatch: pytest.MonkeyPatch) -> None:
    operations = [Operation(tag=index) for index in range(5)]
    for index, operation in enumerate(operations):
        port.post(key=index, information=index * 10, operation=operation)
    port.post(key=99)  # and a packet with no operation
    results = hook_the_dequeue(monkeypatch)
    with pytest.raises(Interrupted):
        port.dequeue(timeout=5)
    assert results and results[0], "the kernel returned the batch before the exception"
    assert port.pending_count == 5 - sum(o.state is OperationState.COMPLETED for o in operations)
    started = time.monotonic()
    batch = port.dequeue(timeout=5)  # the left-over batch, at once
    assert batch, "the batch the kernel returned before the exception was lost"
    assert time.monotonic() - started < 4
    for _ in range(10):
        if len(batch) >= 6:
            break
        batch += port.dequeue(timeout=1)
    assert sorted(c.key for c in batch) == [0, 1, 2, 3, 4, 99]
    for completion in batch:
        if completion.key != 99:
            assert completion.operation is operations[completion.key]
            assert completion.operation.result() == completion.key * 10
    assert port.pending_count == 0
    assert port.dequeue(timeout=0) == []
    assert port.stray_completions == 0


def test_has_queued_looks_without_taking(port: CompletionPort,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``has_queued`` (``NtQueryIoCompletion``'s depth) takes nothing, and also sees a batch
    an interrupted dequeue left to hand over (no longer queued on the port)."""
    assert not port.has_queued()
    port.post(key=1)
    port.post(key=2)
    assert port.has_queued() and port.has_queued()
    assert nt.NtQueryIoCompletion(port.handle) == 2
    hook_the_dequeue(monkeypatch)
    with pytest.raises(Interrupted):
        port.dequeue(timeout=5)
    assert nt.NtQueryIoCompletion(port.handle) == 0
    assert port.has_queued(), "the left-over batch is waiting"
    assert sorted(c.key for c in port.dequeue(timeout=0)) == [1, 2]
    assert not port.has_queued()


def test_an_exception_after_a_timed_out_dequeue_leaves_no_phantom_batch(
        port: CompletionPort, monkeypatch: pytest.MonkeyPatch) -> None:
    """A timeout writes no entry (and, under Wine, a meaningless count: F2): the batch left
    by an interrupted timed-out call must not be taken for completions."""
    hook_the_dequeue(monkeypatch)
    with pytest.raises(Interrupted):
        port.dequeue(timeout=0.05)
    assert port.dequeue(timeout=0.05) == []
    port.post(key=7)
    assert [c.key for c in port.dequeue(timeout=5)] == [7]


def test_an_exception_after_the_issuing_call_keeps_the_operation_owned(
        port: CompletionPort, monkeypatch: pytest.MonkeyPatch) -> None:
    """The request reached the kernel; the exception came after. The port must still own the
    operation, and its completion must arrive and complete it."""
    read_end, write_end = create_pipe()
    with read_end, write_end:
        port.associate(read_end.value, 5)
        port.associate(write_end.value, 6)
        interrupt_after_first_call(monkeypatch, nt, "ReadFile")
        operation = ReadOperation("kept", ctypes.create_string_buffer(16))
        with pytest.raises(Interrupted):
            start_read(port, read_end.value, 16, operation=operation)
        assert operation.pending and port.pending_count == 1
        with pytest.raises(OperationBusyError):
            operation.buffer  # noqa: B018 - the kernel may write it
        start_write(port, write_end.value, b"late bytes")
        completions: list[Completion] = []
        while len(completions) < 2:
            completions += port.dequeue(timeout=5)
        [completion] = [c for c in completions if c.key == 5]
        assert completion.operation is operation and operation.data == b"late bytes"
        assert port.pending_count == 0


def test_one_entry_dequeues_interrupted_after_the_kernel_call_lose_nothing(
        port: CompletionPort, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-entry hand-over (a Wine loop asks for one entry at a time): an exception right
    after the kernel returned the entry leaves it to the next dequeue, which hands it over
    once (operations and a packet with none); a stray one is counted and warned about."""
    operations = [Operation(tag=index) for index in range(3)]
    for index, operation in enumerate(operations):
        port.post(key=index, information=index + 1, operation=operation)
    port.post(key=50)  # no operation
    stray = Operation()
    port.start(stray, 0, lambda _overlapped: 1)  # completed inline: a packet for it is stray
    nt.NtSetIoCompletion(port.handle, 60, stray.apc_context, 0, 1)
    seen: list[Completion] = []
    for _ in range(4):
        hook_the_dequeue(monkeypatch)
        with pytest.raises(Interrupted):
            port.dequeue(timeout=5, max_entries=1)
        monkeypatch.undo()
        seen += port.dequeue(timeout=5, max_entries=1)  # the left-over entry, at once
        assert len(seen) == len(set(map(id, seen)))
    assert [c.key for c in seen] == [0, 1, 2, 50]
    for completion in seen[:3]:
        assert completion.operation is operations[completion.key]
        assert completion.operation.result() == completion.key + 1
    assert seen[3].operation is None and port.pending_count == 0
    with pytest.warns(RuntimeWarning, match="no pending operation"):
        [completion] = port.dequeue(timeout=5, max_entries=1)
    assert completion.key == 60 and completion.operation is None
    assert port.stray_completions == 1
    assert port.dequeue(timeout=0, max_entries=1) == []


def test_an_exception_after_an_overlapped_read_keeps_it_owned(
        port: CompletionPort, monkeypatch: pytest.MonkeyPatch) -> None:
    """``OverlappedIO``'s requests (``CompletionPort._start_transfer``, no ``issue`` closure):
    an exception right after ``ReadFile`` took a pending read leaves the operation to the
    port; the bytes written later arrive in it and only its dequeue releases it."""
    from iocp import PipeIO

    read_end, write_end = create_pipe()
    reader, writer = PipeIO(port, read_end, 5), PipeIO(port, write_end, 6)
    try:
        real = PipeIO._read_call

        def interrupted(*args: Any) -> int:
            real(*args)
            raise Interrupted("after ReadFile")

        monkeypatch.setattr(PipeIO, "_read_call", staticmethod(interrupted))
        operation = ReadOperation("kept", ctypes.create_string_buffer(32))
        with pytest.raises(Interrupted):
            reader.read(32, operation=operation)
        monkeypatch.undo()
        gc.collect()
        assert operation.pending and port.pending_count == 1
        with pytest.raises(OperationBusyError):
            reader.read(32, operation=operation)
        write = writer.write(b"late bytes")
        completions: list[Completion] = []
        deadline = time.monotonic() + 5
        while operation.pending and time.monotonic() < deadline:
            completions += port.dequeue(timeout=1, max_entries=1)
        assert operation.data == b"late bytes"
        while write.pending and time.monotonic() < deadline:
            completions += port.dequeue(timeout=1, max_entries=1)
        assert port.pending_count == 0 and port.stray_completions == 0
    finally:
        reader.close()
        writer.close()
        read_end.close()
        write_end.close()


def test_the_calls_own_failure_releases_the_operation(port: CompletionPort) -> None:
    read_end, write_end = create_pipe()
    port.associate(read_end.value, 5)
    write_end.close()  # the writer is gone: ReadFile fails at once (F12), nothing is queued
    try:
        operation = ReadOperation(None, ctypes.create_string_buffer(8))
        with pytest.raises(BrokenPipeError):
            start_read(port, read_end.value, 8, operation=operation)
        assert operation.state is OperationState.IDLE and port.pending_count == 0
        assert port.dequeue(timeout=0.1) == []
    finally:
        read_end.close()


def test_an_issue_that_raises_leaves_the_operation_owned(port: CompletionPort) -> None:
    operation = Operation()

    def issue(_overlapped: OVERLAPPED) -> IssueResult:
        raise Interrupted("between the call and its return")

    with pytest.raises(Interrupted):
        port.start(operation, 0, issue)
    assert operation.pending and port.pending_count == 1

    def old_style(_overlapped: OVERLAPPED) -> Any:
        return True  # the pre-IssueResult protocol: refused, and not taken as "1 byte"

    other = Operation()
    with pytest.raises(TypeError, match="PACKET"):
        port.start(other, 0, old_style)
    assert other.pending and port.pending_count == 2


def test_an_inline_completion_completes_at_once_and_queues_nothing(port: CompletionPort) -> None:
    operation = Operation(tag="inline")
    assert port.start(operation, 0, lambda _overlapped: 42) is operation
    assert operation.state is OperationState.COMPLETED and operation.result() == 42
    assert port.pending_count == 0
    assert port.dequeue(timeout=0.05) == []
    port.start(operation, 0, lambda _overlapped: 0)  # and it can be issued again
    assert operation.result() == 0


def test_a_packet_for_an_inline_completion_is_noticed(port: CompletionPort) -> None:
    """If a handle were wrongly believed to skip the port on success, the packet that still
    comes names an operation the port already completed: it is counted and warned about,
    never handed to whatever operation is pending at that address."""
    operation = Operation()
    port.start(operation, 0, lambda _overlapped: 5)
    nt.NtSetIoCompletion(port.handle, 3, operation.apc_context, 0, 5)  # the packet that came
    with pytest.warns(RuntimeWarning, match="no pending operation"):
        [completion] = port.dequeue(timeout=5)
    assert completion.operation is None and completion.apc_context == operation.apc_context
    assert port.stray_completions == 1


def test_raw_keys_are_never_taken_for_operations(port: CompletionPort) -> None:
    pending = Operation()
    port.start(pending, 0, lambda _overlapped: PACKET)  # pending, no packet coming
    port.add_raw_key(9)
    # A job object's message carries a process id as ApcContext; even one that equals a
    # pending operation's address is not that operation's completion.
    nt.NtSetIoCompletion(port.handle, 9, pending.apc_context, 0, 7)
    [completion] = port.dequeue(timeout=5)
    assert (completion.key, completion.operation, completion.information) == (9, None, 7)
    assert pending.pending and port.stray_completions == 0
    port.post(operation=Operation())  # let close() find its pending one complete normally
    port.dequeue(timeout=5)
    port._pending.clear()  # the fake pending request never reached a kernel
    pending._abort()


def test_close_wakes_a_thread_blocked_in_dequeue() -> None:
    port = CompletionPort()
    outcome: list[object] = []
    entered = threading.Event()

    def blocked() -> None:
        entered.set()
        try:
            outcome.append(port.dequeue(timeout=None))
            outcome.append(port.dequeue(timeout=None))
        except PortClosedError as error:
            outcome.append(error)

    thread = threading.Thread(target=blocked)
    thread.start()
    entered.wait(5)
    time.sleep(0.2)  # in the kernel call by now
    started = time.monotonic()
    port.close()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert port.closed
    first = outcome[0]
    assert isinstance(first, list) and all(c.key == WAKEUP_KEY for c in first)
    assert isinstance(outcome[-1], PortClosedError)


def test_timeouts_are_checked_before_any_call(port: CompletionPort) -> None:
    assert relative_timeout(None) is None and relative_timeout(0) == 0
    assert relative_timeout(1e-9) == -1  # rounded up: a short wait never becomes a poll
    with pytest.raises(OverflowError, match="None to wait forever"):
        relative_timeout(float("inf"))
    with pytest.raises(OverflowError):
        port.dequeue(timeout=float("inf"))
    with pytest.raises(ValueError):
        relative_timeout(-0.5)


def test_completions_handed_to_a_consumer_list(port: CompletionPort) -> None:
    mine: list[Completion] = [Completion(0, 0, 0, None, 0)]
    port.post(key=1)
    assert port.dequeue(timeout=5, into=mine) is mine
    assert [c.key for c in mine] == [0, 1]
