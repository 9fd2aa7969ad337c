"""The I/O completion port wrapper, and the rules that keep kernel-owned memory safe.

Who owns what, until when
-------------------------
An overlapped request hands the kernel the address of memory it will write later: the
request's ``OVERLAPPED`` (whose first 16 bytes are its ``IO_STATUS_BLOCK``) and any buffer it
reads into. That memory belongs to an :class:`~iocp.operation.Operation`. From the moment the
request *may* have reached the kernel until its completion has been seen, the port holds the
operation in its pending table (address -> operation), so that nothing the caller does —
dropping its references, an exception, Ctrl-C — lets Python free memory the kernel may still
write. Freed too early, the kernel writes into whatever Python put there next, and a new
operation allocated at the same address receives the old completion.

What a completion means
-----------------------
A request ends in one of three ways, and ``start`` learns which from the ``issue`` callable
that makes the call:

* it failed at once (the call returned an error): no packet will come, the operation is
  released at once — *only* then, and only when ``issue`` *returns* that error. An exception
  that ``issue`` *raises* may have arrived after the kernel took the request
  (KeyboardInterrupt lands between any two bytecodes), so the operation stays pending:
  keeping memory the kernel never took costs a few bytes; freeing memory it did take is a
  use-after-free;
* it completed at once and, because the handle has ``FILE_SKIP_COMPLETION_PORT_ON_SUCCESS``,
  no packet will come: the operation is completed inline, with the bytes transferred;
* otherwise (pending, or completed with a packet queued): the completion is dequeued later,
  and only the dequeue releases the operation.

The status block is preset to ``STATUS_PENDING`` before the call, so "is the kernel still
working on it?" can be read from the memory itself before cancelling (a cancel of a request
already completed would otherwise hit whatever request reuses the address).

Dequeued means delivered
------------------------
``NtRemoveIoCompletionEx`` writes a batch into memory the port keeps per thread, with the
count (pure ctypes: the entries and a ``c_uint32``; with the speedups: the decoded batch and
its count in C memory). The count is cleared only after every entry was handed to its
operation and appended to the caller's list. If an exception strikes between the kernel's
return and that point (where Ctrl-C lands most: threads spend their time blocked in the
dequeue), the batch is still there and the next dequeue on that thread hands it over first.
Consumers that must not lose a completion pass their own list (``into=``) and remove each
completion only once they have acted on it.

Orphans
-------
Closing the port cancels what is pending and drains for ``CLOSE_DRAIN_SECONDS``. An operation
whose completion never came (or whose issue was interrupted) is kept for the life of the
process with a ``ResourceWarning``. A thread blocked in ``dequeue`` when ``close`` is called
is woken first, and the handle is closed only once no thread is inside the kernel call with
it: a handle value the system reuses is never dequeued from by mistake.

C relays
--------
With the speedups, :mod:`iocp.c_relay` may add a *relay set* to a port: requests issued and
owned by C (their memory malloc'ed there), recognised in :meth:`dequeue` by their
``OVERLAPPED`` addresses and continued in C, never handed to Python. The same rules hold for
them in C: freed only once their completion was seen; closing the port cancels and drains them
with the Python operations, and keeps (never frees) what did not complete, with a
``ResourceWarning``.

ACTIVE_KB.md (D2-D5, F1-F4, F15, S10, CR7) holds the evidence.
"""

from __future__ import annotations

import ctypes
import math
import threading
import time
import warnings
from collections.abc import Callable
from itertools import repeat
from types import TracebackType
from typing import NamedTuple, TypeAlias

from ntdll import functions as nt
from ntdll import status as ntstatus
from ntdll.functions import Buffer
from ntdll.speedups import NativeBatch
from ntdll.speedups import native as _native
from ntdll.structures import FILE_IO_COMPLETION_INFORMATION, OVERLAPPED

from .operation import Operation

__all__ = [
    "PACKET",
    "WAKEUP_KEY",
    "Completion",
    "CompletionPort",
    "IssueResult",
    "PortClosedError",
    "decode_entries",
    "relative_timeout",
    "validate_timeout",
]

DEFAULT_BATCH = 128
"""Entries dequeued per call by default."""

WAKEUP_KEY = 0xFFFF_FFFF_FFFF_FFFF
"""The completion key :meth:`CompletionPort.wakeup` posts with; associate no handle with it."""

CLOSE_DRAIN_SECONDS = 2.0
"""How long :meth:`CompletionPort.close` waits for cancelled requests to complete."""

CLOSE_WAKE_SECONDS = 2.0
"""How long :meth:`CompletionPort.close` waits for threads blocked in :meth:`dequeue` to leave."""

PACKET = -1
"""What an ``issue`` callable returns when a completion packet will be queued (the request is
pending, or completed with a packet)."""

IssueResult: TypeAlias = "int | OSError"
"""What an ``issue`` callable returns: :data:`PACKET`; a byte count ``>= 0`` (completed at once,
no packet: the handle skips the port on success); or the ``OSError`` of the call's own failure
(nothing queued). See the module's essay."""

Transfer: TypeAlias = Callable[[int, Buffer, int, OVERLAPPED], int]
"""A Win32 overlapped transfer (``ReadFile``, ``WSARecv``...): ``(handle, buffer, size,
overlapped)`` -> 0 when it completed at once, another non-error code (``ERROR_IO_PENDING``) when
a packet will come; raises ``OSError`` when it failed (nothing queued)."""

# Operations still pending when their port closed (the kernel did not complete them in time).
# Their memory may yet be written by the kernel, so it is never freed.
_orphaned: list[Operation] = []
RELAY_INLINE_BUDGET = 64
"""Inline completions one dequeue continues in C before it posts the next continuation to the
port, behind what is queued there (an always-ready handle cannot starve the others)."""

# Preset into the first entry of a pure-ctypes batch before each call: a timeout writes no
# entry, so a batch left over by an interrupted call whose first entry still reads this was a
# timeout (NtRemoveIoCompletionEx writes a meaningless count then: F2).
_SENTINEL_KEY = 0x5EA7_ED00_DEAD_BEEF
_SENTINEL_APC = 1  # never an OVERLAPPED address (those are 8-byte aligned)


def validate_timeout(timeout: float | None) -> None:
    """Refuse a timeout that is not ``None`` or a number of seconds ``>= 0`` (NaN included)."""
    if timeout is not None and (math.isnan(timeout) or timeout < 0):
        raise ValueError(f"timeout must be None or >= 0 seconds, not {timeout!r}")


def relative_timeout(timeout: float | None) -> int | None:
    """Seconds (validated) as an NT relative timeout: negative 100-ns units, rounded up so a
    short wait never becomes a poll; ``None`` stays ``None`` (no timeout).

    Raises ``ValueError`` for a negative or NaN timeout and ``OverflowError`` for one too large
    for NT (infinity included: use ``None``)."""
    validate_timeout(timeout)
    if timeout is None:
        return None
    if not timeout:
        return 0
    units = timeout * 10_000_000
    if not units < 2**63:
        raise OverflowError(f"timeout {timeout!r} s is too large: use None to wait forever")
    return -math.ceil(units)


class PortClosedError(ValueError):
    """The completion port was used after ``close()``."""


class Completion(NamedTuple):
    """One dequeued completion packet (immutable).

    ``operation`` is the :class:`Operation` whose request completed (now ``COMPLETED``), or
    ``None`` for a packet posted without one. ``apc_context`` is the raw ``ApcContext`` the
    kernel returned, kept for diagnostics (it equals ``operation.apc_context``).

    A named tuple rather than a frozen dataclass: one is built per completion in the dequeue
    loop, and a tuple is built about three times faster (it is most of the loop's cost once the
    entries are decoded in C).
    """

    key: int
    status: int
    information: int
    operation: Operation | None
    apc_context: int

    @property
    def tag(self) -> object:
        return self.operation.tag if self.operation is not None else None


_new_completion: Callable[
    [type[Completion], tuple[int, int, int, Operation | None, int]], Completion
] = tuple.__new__
"""``tuple.__new__``: builds a :class:`Completion` from its fields without a Python call."""


_STATUS_MASK = (0xFFFFFFFF).__and__


def decode_entries(entries: ctypes.Array[FILE_IO_COMPLETION_INFORMATION],
                   count: int) -> list[int]:
    """The first ``count`` entries as ``key, apc_context, status (unsigned), information`` per
    completion, flat: what the C speedups' decoder returns, read in bulk through a buffer view
    (about 2.5 times faster than field by field: ACTIVE_KB S9)."""
    if not 0 <= count <= len(entries):
        raise ValueError(f"count {count} outside 0..{len(entries)}")
    words: list[int] = memoryview(entries).cast("B").cast("Q")[:4 * count].tolist()
    # The status block's first word is a union of the 32-bit status and a pointer.
    words[2::4] = map(_STATUS_MASK, words[2::4])
    return words


class _PureBatch:
    """Per (port, thread) memory the pure-ctypes dequeue writes: entries and their count."""

    __slots__ = ("count", "entries", "one")

    def __init__(self, capacity: int) -> None:
        self.entries = (FILE_IO_COMPLETION_INFORMATION * capacity)()
        self.count = ctypes.c_uint32(0)
        self.one = (FILE_IO_COMPLETION_INFORMATION * 1).from_buffer(self.entries)
        """The first entry alone: what a dequeue of one entry passes (made once)."""

    def view(self, entries: int) -> ctypes.Array[FILE_IO_COMPLETION_INFORMATION]:
        """The first ``entries`` entries, as the array the kernel call is given."""
        if entries == 1:
            return self.one
        return (FILE_IO_COMPLETION_INFORMATION * entries).from_buffer(self.entries)

    def arm(self) -> None:
        """Before a call: no batch, and a first entry a timeout leaves as it is."""
        self.count.value = 0
        first = self.entries[0]
        first.KeyContext = _SENTINEL_KEY
        first.ApcContext = _SENTINEL_APC

    def leftover(self) -> int:
        """How many entries an interrupted call left to hand over (0: none, or a timeout)."""
        count = self.count.value
        if not count:
            return 0
        first = self.entries[0]
        if first.KeyContext == _SENTINEL_KEY and first.ApcContext == _SENTINEL_APC:
            self.count.value = 0  # a timeout: its count means nothing
            return 0
        return min(count, len(self.entries))

    def release(self) -> None:
        self.count.value = 0


class CompletionPort:
    """An NT I/O completion port (``NtCreateIoCompletion``).

    Handles are associated with a key; requests issued through :meth:`start` (or the
    ``iocp.file_io`` / ``afd`` helpers built on it) complete here, and :meth:`dequeue` returns them
    in batches. The port keeps every pending :class:`Operation` alive until its completion has
    been seen (see the module's essay). Thread-safe: any thread may issue, post or cancel while
    another dequeues.
    """

    def __init__(self, concurrency: int = 0) -> None:
        self._lock = threading.Lock()
        self._left = threading.Condition(self._lock)  # notified when a dequeuer leaves
        self._pending: dict[int, Operation] = {}
        self._local = threading.local()
        self._raw_keys: frozenset[int] = frozenset()
        self._dequeuers = 0
        self._closing = False
        self.stray_completions = 0
        """Packets naming an ``ApcContext`` that is no pending operation's (see :meth:`dequeue`)."""
        self._relay_set: int | None = None  # C relays' requests (iocp.c_relay), made on demand
        self._handle: int | None = nt.NtCreateIoCompletion(concurrency)

    # -- state ----------------------------------------------------------------------------
    @property
    def handle(self) -> int:
        """The port's raw handle; raises :class:`PortClosedError` once closed (or closing)."""
        handle = self._handle
        if handle is None or self._closing:
            raise PortClosedError("operation on a closed completion port")
        return handle

    @property
    def closed(self) -> bool:
        return self._handle is None

    @property
    def pending_count(self) -> int:
        """How many issued operations have not had their completion seen yet."""
        return len(self._pending)

    # -- association and posting ----------------------------------------------------------
    def associate(self, handle: int, key: int) -> None:
        """Deliver completions of I/O on ``handle`` (a file, pipe, device or base socket
        handle, opened for overlapped I/O) to this port, tagged with ``key``.

        A handle can be associated with one port only, once; closing it ends the association.
        """
        nt.CreateIoCompletionPort(handle, self.handle, key, 0)

    def add_raw_key(self, key: int) -> None:
        """Packets with ``key`` carry no operation (a job object's messages carry a process
        id as ``ApcContext``): :meth:`dequeue` returns them with ``operation=None`` and never
        looks their ``ApcContext`` up in the pending table."""
        with self._lock:
            self._raw_keys = self._raw_keys | {key}

    def post(self, key: int = 0, status: int = ntstatus.STATUS_SUCCESS, information: int = 0,
             operation: Operation | None = None) -> None:
        """Queue a packet (``NtSetIoCompletion``) that :meth:`dequeue` returns as given.

        With ``operation``, the packet completes it: it is held by the port until dequeued.
        """
        if operation is None:
            nt.NtSetIoCompletion(self.handle, key, 0, status, information)
            return
        handle = self.handle

        def issue(overlapped: OVERLAPPED) -> IssueResult:
            try:
                nt.NtSetIoCompletion(handle, key, ctypes.addressof(overlapped), status,
                                     information)
            except OSError as error:
                return error
            return PACKET

        self.start(operation, 0, issue)

    def wakeup(self) -> None:
        """Wake a thread blocked in :meth:`dequeue`: posts a packet with :data:`WAKEUP_KEY`.

        Safe from any thread.
        """
        nt.NtSetIoCompletion(self.handle, WAKEUP_KEY, 0, ntstatus.STATUS_SUCCESS, 0)

    def has_queued(self) -> bool:
        """Whether a :meth:`dequeue` on this thread would find something at once: a packet
        queued on the port (``NtQueryIoCompletion``'s depth) or a batch an interrupted dequeue
        left to hand over. Takes nothing; under Wine 8 it is one server request where a
        zero-timeout dequeue that finds the port empty is two."""
        batch: _PureBatch | None = getattr(self._local, "batch", None)
        if batch is not None and batch.leftover():
            return True
        native_batch = getattr(self._local, "native_batch", None)
        if native_batch is not None and _native is not None and native_batch.count[0]:
            return True
        return nt.NtQueryIoCompletion(self.handle) > 0

    # -- issuing --------------------------------------------------------------------------
    def start(self, operation: Operation, handle: int,
              issue: Callable[[OVERLAPPED], IssueResult]) -> Operation:
        """Issue one request for ``operation`` on ``handle``; returns ``operation``.

        ``issue`` receives the operation's ``OVERLAPPED`` (status preset to ``STATUS_PENDING``;
        its address is the ``ApcContext``), makes the call, and *returns* what happened
        (:data:`IssueResult`): :data:`PACKET`, a byte count for a request completed at once
        with no packet coming (the operation is then ``COMPLETED`` when this returns), or the
        ``OSError`` of the call's own failure, which this raises after releasing the
        operation. ``issue`` must validate nothing: an exception it *raises* leaves the
        operation owned by the port (the kernel may have taken the request), so arguments are
        checked before calling this.

        The operation is registered *before* the call, as its completion may be dequeued by
        another thread before ``issue`` even returns.
        """
        with self._lock:
            self.handle  # noqa: B018 - raises PortClosedError once closed
            overlapped = operation._begin(handle)
            self._pending[operation.apc_context] = operation
        outcome = issue(overlapped)
        if outcome == PACKET:
            return operation
        if type(outcome) is int and outcome >= 0:
            # Completed at once with no packet: nothing will dequeue it, so it ends here.
            with self._lock:
                self._pending.pop(operation.apc_context, None)
                operation._complete(ntstatus.STATUS_SUCCESS, outcome)
            return operation
        if isinstance(outcome, OSError):
            with self._lock:
                self._pending.pop(operation.apc_context, None)
                operation._abort()
            raise outcome
        # A bug in the caller: whether the kernel took the request is unknown, so the
        # operation stays owned by the port.
        raise TypeError(f"issue() returned {outcome!r}: expected PACKET, a byte count >= 0 or "
                        "the OSError of the call's failure")

    def _start_transfer(self, operation: Operation, handle: int, call: Transfer,
                        buffer: Buffer, size: int, skip: bool) -> None:
        """:meth:`start` for a read or write (``iocp.overlapped_io``), with no ``issue``
        closure made per request: the same rules, in one frame.

        ``call(handle, buffer, size, overlapped)`` returns 0 (completed at once) or another
        non-error code (a packet will come), or raises ``OSError`` (failed at once, nothing
        queued). With ``skip`` (the handle has skip-on-success) a 0 means no packet is coming:
        the operation is completed here with the status block's count. Anything else that
        the call raises (an exception after the kernel may have taken the request) leaves the
        operation owned by the port, as in :meth:`start`.
        """
        apc = operation._apc
        with self._lock:
            if self._handle is None or self._closing:
                raise PortClosedError("operation on a closed completion port")
            overlapped = operation._begin(handle)
            self._pending[apc] = operation
        try:
            code = call(handle, buffer, size, overlapped)
        except OSError:
            with self._lock:
                self._pending.pop(apc, None)
                operation._abort()
            raise
        if code == 0 and skip:
            # Completed at once and no packet is coming: nothing will dequeue it, so it ends
            # here, with the count the status block already holds.
            with self._lock:
                self._pending.pop(apc, None)
                operation._complete(ntstatus.STATUS_SUCCESS, overlapped.InternalHigh)

    def device_io_control(self, handle: int, io_control_code: int, buffer: Buffer,
                          operation: Operation) -> Operation:
        """Issue ``NtDeviceIoControlFile`` with ``buffer`` as both input and output.

        ``handle`` must be associated with this port; ``buffer`` should be the operation's own.
        """
        def issue(overlapped: OVERLAPPED) -> IssueResult:
            try:
                nt.NtDeviceIoControlFile(handle, None, ctypes.addressof(overlapped), overlapped,
                                         io_control_code, buffer, buffer)
            except OSError as error:
                return error
            return PACKET

        return self.start(operation, handle, issue)

    def cancel(self, operation: Operation) -> bool:
        """Ask the kernel to cancel a pending request (``NtCancelIoFileEx``).

        Returns ``True`` if a cancellation was requested, ``False`` if the request is not
        pending any more (completed, or its completion is already queued). Either way the
        operation stays pending until its completion is dequeued, with ``STATUS_CANCELLED``
        or, if it won the race, its real result.
        """
        if not operation.pending or not operation.handle:
            return False  # completed, never issued, or a posted packet: nothing to cancel
        if _native is not None:  # the C side reads the status block itself
            return _native.cancel(operation.handle, operation._overlapped)
        if not operation._kernel_still_pending():
            return False
        return nt.NtCancelIoFileEx(operation.handle, operation._overlapped)

    def _relays(self) -> int:
        """The C relay set of this port (made on first use; needs the speedups): from then on
        :meth:`dequeue` continues the relays' requests in C (:mod:`iocp.c_relay`)."""
        if _native is None:
            raise RuntimeError("C relays need the speedups (ntdll.speedups.native is None)")
        with self._lock:
            if self._relay_set is None:
                self._relay_set = _native.relay_set_new(self.handle, RELAY_INLINE_BUDGET)
            return self._relay_set

    # -- dequeuing ------------------------------------------------------------------------
    def dequeue(self, timeout: float | None = None, max_entries: int = DEFAULT_BATCH,
                into: list[Completion] | None = None) -> list[Completion]:
        """Wait for completions and return up to ``max_entries`` of them.

        ``timeout`` in seconds (0 polls; ``None`` waits forever). A timeout returns ``[]``.
        Each returned operation is ``COMPLETED`` and released by the port. With ``into``, the
        completions are appended to that list (and it is returned): a consumer that keeps the
        list and removes each completion only after acting on it loses none to an exception.

        A batch that an exception interrupted before it was handed over is returned first,
        without waiting. A packet whose ``ApcContext`` is neither 0 nor a pending operation's
        (nor of a raw key) is counted in :attr:`stray_completions` and returned with
        ``operation=None``: it means a completion came that the port did not expect (say, a
        packet for a request it completed inline).
        """
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        relative = relative_timeout(timeout)
        result: list[Completion] = [] if into is None else into
        with self._lock:
            handle = self.handle
            self._dequeuers += 1
        try:
            if _native is not None:
                self._dequeue_native(handle, relative, max_entries, result)
            else:
                self._dequeue_pure(handle, relative, max_entries, result)
        finally:
            with self._lock:
                self._dequeuers -= 1
                self._left.notify_all()
        return result

    def _pure_batch(self, max_entries: int) -> _PureBatch:
        batch: _PureBatch | None = getattr(self._local, "batch", None)
        if batch is None:
            batch = self._local.batch = _PureBatch(max(max_entries, DEFAULT_BATCH))
        elif len(batch.entries) < max_entries and not batch.leftover():
            batch = self._local.batch = _PureBatch(max_entries)
        return batch

    def _dequeue_pure(self, handle: int, relative: int | None, max_entries: int,
                      into: list[Completion]) -> None:
        batch = self._pure_batch(max_entries)
        left = batch.leftover()
        if left:
            self._hand_over_entries(batch.entries, left, into, recovering=True)
            batch.release()
            return
        batch.arm()
        view = batch.entries if len(batch.entries) == max_entries else batch.view(max_entries)
        count = nt.NtRemoveIoCompletionEx(handle, view, relative, batch.count)
        if count:
            self._hand_over_entries(batch.entries, count, into, recovering=False)
        batch.release()

    def _hand_over_entries(self, entries: ctypes.Array[FILE_IO_COMPLETION_INFORMATION],
                           count: int, into: list[Completion], recovering: bool) -> None:
        """Pure ctypes: decode the first ``count`` entries, hand each completion to its
        operation, and append them to ``into``."""
        self._hand_over(decode_entries(entries, count), into, recovering)

    def _dequeue_native(self, handle: int, relative: int | None, max_entries: int,
                        into: list[Completion]) -> None:
        """:meth:`dequeue` with the C speedups: the batch is dequeued and decoded in C."""
        native = _native
        assert native is not None
        batch: NativeBatch | None = getattr(self._local, "native_batch", None)
        if batch is None or (batch.capacity < max_entries and batch.leftover(native.ffi) is None):
            batch = self._local.native_batch = native.new_batch(max(max_entries, DEFAULT_BATCH))
        left = batch.leftover(native.ffi)
        if left is not None:
            self._hand_over(left, into, recovering=True)
            batch.release()
            return
        relays = self._relay_set
        if relays is None:
            flat = native.remove_into(handle, batch, max_entries, relative)
        else:
            flat = native.relay_remove_into(relays, batch, max_entries, relative)
        if flat:
            self._hand_over(flat, into, recovering=False)
        batch.release()

    def _hand_over(self, flat: list[int], into: list[Completion], recovering: bool) -> None:
        """Hand each completion (``key, apc_context, status, information`` per completion,
        flat) to its operation and append it to ``into``.

        Column by column, with C-level iteration (slices, ``map``): per completion this is
        about a third of a Python loop's cost. ``recovering``: the batch was left over by an
        interrupted hand-over, so entries whose operation is no longer pending were handed
        over already and are skipped.
        """
        if len(flat) == 4:  # one completion (the common case of a Wine loop asking for one)
            self._hand_over_one(flat, into, recovering)
            return
        keys, apc_contexts = flat[0::4], flat[1::4]
        statuses, informations = flat[2::4], flat[3::4]
        raw = self._raw_keys
        with self._lock:
            pop = self._pending.pop
            if raw:
                apc_lookup = [0 if key in raw else apc for key, apc in zip(keys, apc_contexts,
                                                                           strict=True)]
            else:
                apc_lookup = apc_contexts
            # An ApcContext of 0 (a packet posted without an operation) is never a key.
            operations = list(map(pop, apc_lookup, repeat(None)))
            for operation, status, information in zip(operations, statuses, informations,
                                                      strict=True):
                if operation is not None:
                    operation._complete(status, information)
            completions = list(map(_new_completion, repeat(Completion),
                                   zip(keys, statuses, informations, operations, apc_contexts,
                                       strict=True)))
            strays: list[Completion] = []
            if None in operations:  # posted packets (apc 0), raw keys, or strays
                strays = [c for c, apc in zip(completions, apc_lookup, strict=True)
                          if apc and c.operation is None]
            if strays:
                if recovering:
                    stray_ids = {id(c) for c in strays}
                    completions = [c for c in completions if id(c) not in stray_ids]
                else:
                    self.stray_completions += len(strays)
            into.extend(completions)
        if strays and not recovering:
            warnings.warn(f"{len(strays)} completion(s) for no pending operation (first: key "
                          f"{strays[0].key:#x}, ApcContext {strays[0].apc_context:#x})",
                          RuntimeWarning, stacklevel=4)

    def _hand_over_one(self, flat: list[int], into: list[Completion], recovering: bool) -> None:
        """:meth:`_hand_over` for a batch of one, with no column slicing or mapping."""
        key, apc, status, information = flat
        raw = self._raw_keys
        lookup = 0 if raw and key in raw else apc  # an ApcContext of 0 is never a key
        with self._lock:
            operation = self._pending.pop(lookup, None)
            if operation is not None:
                operation._complete(status, information)
            elif lookup:  # a stray: no pending operation has this ApcContext
                if recovering:
                    return  # handed over already, before the interruption
                self.stray_completions += 1
            into.append(_new_completion(Completion, (key, status, information, operation, apc)))
        if operation is None and lookup:
            warnings.warn(f"1 completion(s) for no pending operation (first: key {key:#x}, "
                          f"ApcContext {apc:#x})", RuntimeWarning, stacklevel=5)

    # -- closing --------------------------------------------------------------------------
    def close(self) -> None:
        """Cancel what is pending, wait (briefly) for it, wake any thread blocked in
        :meth:`dequeue`, and close the port.

        Completions dequeued while closing are discarded (another thread blocked in
        :meth:`dequeue` may receive some; it then gets :class:`PortClosedError` on its next
        call). An operation whose completion does not arrive within ``CLOSE_DRAIN_SECONDS`` is
        kept alive for the life of the process (the kernel may still write into it) and a
        ``ResourceWarning`` says so. If a blocked thread does not leave the kernel call within
        ``CLOSE_WAKE_SECONDS``, the handle is left open (and a warning says so) rather than
        closed under it: its value could name another object.
        """
        if self._handle is None or self._closing:
            return
        with self._lock:
            pending = list(self._pending.values())
        for operation in pending:
            try:
                self.cancel(operation)
            except OSError:
                # Its handle was closed. Under Wine that ends the request; on Windows closing
                # a handle does not end, for instance, a helper's polls for
                # other sockets (WD1): the drain below then orphans what does not complete.
                pass
        relays = self._relay_set
        if relays is not None:
            assert _native is not None
            _native.relay_set_cancel(relays)
        deadline = time.monotonic() + CLOSE_DRAIN_SECONDS
        while ((self._pending or (relays is not None and _native is not None
                                  and _native.relay_set_pending(relays)))
               and time.monotonic() < deadline):
            self.dequeue(timeout=0.05)
        relays_left = 0
        if relays is not None:
            assert _native is not None
            relays_left = _native.relay_set_free(relays)  # kept, never freed, if any is left
            self._relay_set = None
        with self._lock:
            self._closing = True  # from here on no thread enters the kernel with the handle
            handle = self._handle
            leftover = list(self._pending.values())
            self._pending.clear()
        assert handle is not None
        wake_deadline = time.monotonic() + CLOSE_WAKE_SECONDS
        with self._lock:
            while self._dequeuers and time.monotonic() < wake_deadline:
                nt.NtSetIoCompletion(handle, WAKEUP_KEY, 0, ntstatus.STATUS_SUCCESS, 0)
                self._left.wait(0.05)
            stuck = self._dequeuers
            self._handle = None
        if leftover:
            _orphaned.extend(leftover)
            warnings.warn(f"{len(leftover)} operation(s) still pending when the completion port "
                          "closed; their memory is kept for the life of the process",
                          ResourceWarning, stacklevel=2)
        if relays_left:
            warnings.warn(f"{relays_left} C relay request(s) still pending when the completion "
                          "port closed; their memory is kept for the life of the process",
                          ResourceWarning, stacklevel=2)
        if stuck:
            warnings.warn(f"{stuck} thread(s) still in NtRemoveIoCompletionEx when the port "
                          "closed: its handle is left open", ResourceWarning, stacklevel=2)
            return
        nt.NtClose(handle)

    def __enter__(self) -> CompletionPort:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else f"handle=0x{self._handle:x}"
        return f"<CompletionPort {state} pending={len(self._pending)}>"

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
            try:
                self.close()
            except OSError:
                pass
