"""AfdPoller: epoll-like readiness for any number of sockets, on AFD polls and one port.

How readiness is learnt
-----------------------
``IOCTL_AFD_POLL`` asks the AFD driver to complete a request when one of a socket's events
(receive, send, accept, disconnect, abort, local close, connect failure...) is signalled. The
request is issued on an AFD *helper* handle associated with the poller's completion port, so
its completion is dequeued from the port like any I/O; the poll's ``AFD_POLL_INFO`` names the
socket's base handle. Polls are spread over helpers of :data:`~afd.poll_group.GROUP_SIZE`
sockets (poll groups, :mod:`afd.poll_group`): on Windows cancelling a poll costs more the more
polls are pending on the same handle.

One poll per socket
-------------------
Two polls outstanding on one socket get their completions mixed up by the kernel (trio#52,
wepoll#35), so each registered socket has exactly one state machine
(:class:`~afd.socket_state.AfdSocket`: idle / poll pending / cancel pending, plus delete
pending). A change of interest that the pending poll covers leaves it alone (if it fires for
an event no longer wanted, the re-armed poll asks for less); one it does not cover cancels it,
and the new poll is issued only once the cancellation has been *dequeued*. Until then the poll's
buffer belongs to the kernel: cancel, then reissue — never reissue on top. An unregistered socket
whose poll is still outstanding stays alive (delete pending) until its cancellation is dequeued
(:attr:`AfdPoller.outstanding_polls` counts those too).

Level-triggered: a socket whose poll completed is re-armed before the next wait, not at once, so
a caller that changes its interest after a report pays no issue-then-cancel. With
``oneshot=True`` it reports once, then stays silent until :meth:`AfdPoller.modify`.

The close watch, always on
--------------------------
AFD completes a socket's poll with ``AFD_POLL_LOCAL_CLOSE`` when the socket is closed: that is
the *only* way the poller learns of a close (the handle value is all it holds). So every
registered socket always has a poll outstanding that watches ``LOCAL_CLOSE``, ``ABORT`` and
``CONNECT_FAIL`` — also with no interest (``register(s, 0)``), as epoll still reports ERR and
HUP then — and a fired one-shot keeps a poll watching ``LOCAL_CLOSE`` alone (epoll disarms ERR
and HUP too; ``ABORT`` stays signalled on a reset socket and would complete every re-armed poll).
Without it a close goes unseen: ``len()`` stays wrong, ``modify`` re-arms a stale registration,
and a new socket that gets the same handle value cannot be registered.

Handle reuse
------------
Windows reuses handle values at once. A socket closed while registered leaves the set when its
``LOCAL_CLOSE`` completion is dequeued; ``register`` of a value still in the set first collects
what the port holds (the old socket's close is among it) before deciding ``FileExistsError``.
One window remains, as in wepoll: between a report and the next :meth:`poll` (where it is
re-armed) a socket has no poll; closed *and* its value reused for a socket registered in that
window, the close is not seen. Unregister before closing (the ``selectors`` rule) avoids it.

A poll that fails
-----------------
Issuing fails at once (``NtStatusError``) for a handle that is no longer a socket: at
``register`` that is an error (``NotASocketError``), later it means the socket was closed and
it is dropped. A poll that *completes* with an error status reports ``ERR`` (and IN/OUT if of
interest, so that the socket's next I/O tells why) and is re-armed like any other.

Exceptions (KeyboardInterrupt included)
---------------------------------------
Memory the kernel writes is owned by the port until its completion is dequeued (``iocp.port``),
whatever exception arrives. The poller adds: a poll's operation is recorded as the socket's
before the call, so an exception after the kernel took it leaves the socket ``poll pending``
with it; dequeued completions go into a list the poller keeps (``dequeue(into=...)``) and each
is removed only after it was acted upon, so a batch an exception interrupted is finished by the
next :meth:`poll` (any thread); acting is idempotent (a completion whose operation is no longer
its socket's poll is ignored). Readiness waiting to be reported (beyond ``max_events``, or
collected by ``register``) is kept per socket and reported by the next :meth:`poll`, masked by
the interest of that time.

Closing
-------
:meth:`AfdPoller.close` closes the helpers (the kernel cancels their polls) and the port, which
wakes a thread blocked in :meth:`AfdPoller.poll` and closes nothing under it: that call returns
``[]``; later calls raise :class:`PollerClosedError` (a ``ValueError``, as a closed epoll object).

ACTIVE_KB.md holds the evidence (F7-F11, F24-F28, D11, D12, D15).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType

from iocp import WAKEUP_KEY, Completion, CompletionPort, PortClosedError, validate_timeout
from ntdll import NtStatusError
from ntdll.status import STATUS_INVALID_HANDLE, STATUS_OBJECT_TYPE_MISMATCH

from .base_handle import SocketLike, base_socket_handle, check_socket, socket_handle
from .events import PollEvents, afd_events_for, poll_events_from
from .flags import AfdPollEvents
from .helper import AfdPollOperation
from .poll_group import GROUP_SIZE, PollGroups
from .socket_state import AfdSocket

__all__ = ["CLOSE_WATCH", "GROUP_SIZE", "AfdPoller", "PollerClosedError"]

DEFAULT_MAX_EVENTS = 1024

CLOSE_WATCH = int(AfdPollEvents.LOCAL_CLOSE | AfdPollEvents.ABORT | AfdPollEvents.CONNECT_FAIL)
"""What every registered socket's poll watches, whatever its interest."""
_LOCAL_CLOSE = int(AfdPollEvents.LOCAL_CLOSE)
_ALWAYS_REPORTED = PollEvents.ERR | PollEvents.HUP
_POLL_FAILED = PollEvents.IN | PollEvents.OUT | PollEvents.ERR
# What an AFD poll naming a non-socket fails with (seen under Wine: F11).
_NOT_A_SOCKET = frozenset({STATUS_INVALID_HANDLE, STATUS_OBJECT_TYPE_MISMATCH})
_HELPER_KEY = 1


class PollerClosedError(ValueError):
    """The poller was used after ``close()``."""


@dataclass(eq=False)
class _Registration:
    handle: int
    interest: PollEvents
    data: object
    oneshot: bool
    socket: AfdSocket = field(init=False)
    armed: bool = True  # False: a one-shot that fired (until modify)
    modified: int = 0  # counts modify() calls

    def wanted(self) -> int:
        """The AFD events its poll asks for (never 0: the close watch)."""
        if not self.armed:
            return _LOCAL_CLOSE
        return int(afd_events_for(self.interest)) | CLOSE_WATCH


class AfdPoller:
    """An epoll-like readiness poller for sockets, on AFD polls completing on one port.

    ``register``/``modify``/``unregister`` may be called from any thread, also while another
    thread is blocked in :meth:`poll`; :meth:`wakeup` ends such a wait, :meth:`close` too.
    """

    def __init__(self, group_size: int = GROUP_SIZE, *,
                 port: CompletionPort | None = None) -> None:
        """``port``: the completion port to issue the polls on (the poller takes it over and
        closes it in :meth:`close`); a new one by default. An event loop that completes its
        own I/O on the same port passes a port that keeps those completions for itself (see
        ``afd.aio_port``): the poller acts only on its AFD polls and wake-ups."""
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, not {group_size}")
        self._port = CompletionPort() if port is None else port
        self._groups = PollGroups(self._port, _HELPER_KEY, group_size)
        self._lock = threading.RLock()
        self._registered: dict[int, _Registration] = {}
        self._deleting: dict[_Registration, None] = {}  # unregistered, poll still outstanding
        self._rearm: dict[_Registration, None] = {}
        # Readiness seen and not yet reported: (modify count then, events), in arrival order.
        self._ready: dict[_Registration, tuple[int, PollEvents]] = {}
        # Dequeued completions not yet acted upon (the port appends, poll() removes).
        self._batch: list[Completion] = []
        self._closed = False

    # -- registration ---------------------------------------------------------------------
    def register(self, sock: SocketLike | int, events: PollEvents | int, data: object = None,
                 *, oneshot: bool = False) -> None:
        """Watch ``sock`` for ``events`` (0: only for ERR/HUP and its close); ``data`` is
        returned with its readiness.

        Raises ``FileExistsError`` if already registered, ``ValueError`` for a closed socket,
        :class:`~afd.NotASocketError` for a non-socket.

        A socket closed while registered leaves the set when its close is dequeued. If its
        handle value has already been reused for ``sock``, the queued completions are collected
        first (so the close is seen) before ``FileExistsError`` is decided.
        """
        handle = socket_handle(sock)
        interest = PollEvents(events)
        with self._lock:
            self._check_open()
            if handle in self._registered:
                self._collect_now()
            if handle in self._registered:
                raise FileExistsError(f"socket {handle:#x} is already registered")
            # A non-socket is found by the poll itself (F11): one call fewer.
            base = base_socket_handle(handle, verify=False)
            registration = _Registration(handle, interest, data, oneshot)
            registration.socket = AfdSocket(self._groups.join(), base, registration)
            self._registered[handle] = registration
            try:
                registration.socket.update(registration.wanted())
            except BaseException as error:
                self._forget(registration)
                registration.socket.delete()
                if registration.socket.poll is not None:
                    self._deleting[registration] = None  # interrupted after the call
                if isinstance(error, NtStatusError) and error.ntstatus in _NOT_A_SOCKET:
                    check_socket(handle)  # raises NotASocketError, saying what the handle is
                raise

    def modify(self, sock: SocketLike | int, events: PollEvents | int, data: object = None,
               *, oneshot: bool | None = None) -> None:
        """Change the events (and ``data``; ``oneshot`` if given) of a registered socket.

        Re-arms a one-shot socket. Raises ``FileNotFoundError`` if it is not registered.
        """
        handle = socket_handle(sock)
        interest = PollEvents(events)
        with self._lock:
            self._check_open()
            registration = self._lookup(handle)
            registration.interest = interest
            registration.data = data
            registration.modified += 1
            registration.armed = True
            if oneshot is not None:
                registration.oneshot = oneshot
            self._update(registration)

    def unregister(self, sock: SocketLike | int) -> None:
        """Stop watching ``sock``. Raises ``FileNotFoundError`` if it is not registered."""
        handle = sock if isinstance(sock, int) else sock.fileno()
        with self._lock:
            self._check_open()
            registration = self._lookup(handle)
            self._forget(registration)
            if registration.socket.poll is not None:
                self._deleting[registration] = None
            registration.socket.delete()

    def _lookup(self, handle: int) -> _Registration:
        registration = self._registered.get(handle)
        if registration is None:
            raise FileNotFoundError(f"socket {handle:#x} is not registered")
        return registration

    def _forget(self, registration: _Registration) -> None:
        """Out of the set and of every queue (idempotent)."""
        if self._registered.get(registration.handle) is registration:
            del self._registered[registration.handle]
        self._rearm.pop(registration, None)
        self._ready.pop(registration, None)

    def _update(self, registration: _Registration) -> None:
        """Make the socket's outstanding poll match its interest (under the lock)."""
        if registration.socket.delete_pending:
            return
        try:
            registration.socket.update(registration.wanted())
        except NtStatusError:
            self._drop_closed(registration)  # its handle is no longer an AFD endpoint

    def _drop_closed(self, registration: _Registration) -> None:
        self._forget(registration)
        registration.socket.delete()

    # -- waiting ---------------------------------------------------------------------------
    def poll(self, timeout: float | None = None,
             max_events: int = DEFAULT_MAX_EVENTS) -> list[tuple[object, PollEvents]]:
        """Wait until a socket is ready, :meth:`wakeup` is called, or ``timeout`` seconds pass
        (``None``: forever; 0: do not wait). Returns ``(data, events)`` pairs, at most
        ``max_events`` (the rest waits for the next call); ``[]`` on timeout or wake-up, and
        when :meth:`close` is called meanwhile (later calls raise :class:`PollerClosedError`).
        """
        validate_timeout(timeout)
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, not {max_events}")
        deadline = None if timeout is None else time.monotonic() + timeout
        self._check_open()
        while True:
            with self._lock:
                if self._closed:
                    return []
                woken = self._handle_batch()  # left over by an interrupted call, if any
                self._flush_rearm()
                waiting = bool(self._ready)
            if not waiting and not woken:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    self._port.dequeue(timeout=remaining, max_entries=max_events,
                                       into=self._batch)
                except PortClosedError:
                    if self._closed:
                        return []
                    raise
            with self._lock:
                if self._closed:
                    return []
                woken = self._handle_batch() or woken
                ready = self._take_ready(max_events)
            if ready or woken or (deadline is not None and time.monotonic() >= deadline):
                return ready

    def _handle_batch(self) -> bool:
        """Act on every completion in the batch list, removing each once acted upon (under
        the lock). Returns whether a wake-up was among them."""
        batch = self._batch
        woken = False
        done = 0
        try:
            for completion in batch:
                if completion.key == WAKEUP_KEY:
                    woken = True
                else:
                    operation = completion.operation
                    registration = completion.tag
                    if isinstance(operation, AfdPollOperation) and isinstance(
                            registration, _Registration):
                        self._complete(registration, operation)
                done += 1
        finally:
            del batch[:done]
        return woken

    def _complete(self, registration: _Registration, operation: AfdPollOperation) -> None:
        """One dequeued poll completion. Idempotent: ``socket.completed`` comes last and
        ignores an operation that is no longer the socket's poll."""
        afd_socket = registration.socket
        if operation is not afd_socket.poll:
            return  # acted upon already (an interrupted batch handed over again)
        if afd_socket.delete_pending:
            afd_socket.completed(operation)  # gives the group place back
            self._deleting.pop(registration, None)
            return
        events = PollEvents(0)
        if operation.cancelled:
            pass
        elif not operation.succeeded:
            # The poll itself failed: report the socket in error; its next I/O tells why.
            events = _POLL_FAILED & (registration.interest | _ALWAYS_REPORTED)
        else:
            reported = operation.reported_events()
            if reported & _LOCAL_CLOSE:
                self._forget(registration)
                afd_socket.completed(operation)
                afd_socket.delete()
                return
            events = poll_events_from(reported, registration.interest)
        if events and registration.armed:
            if registration.oneshot:
                registration.armed = False
            modified, earlier = self._ready.get(registration, (registration.modified, 0))
            self._ready[registration] = (modified, events | earlier)
        self._rearm[registration] = None
        afd_socket.completed(operation)

    def _collect_now(self) -> None:
        """Dequeue what has completed without waiting (under the lock); readiness waits for
        the next poll() (a thread blocked in poll() is woken to report it)."""
        ready_before = len(self._ready)
        woken = self._handle_batch()
        while self._port.dequeue(timeout=0, into=self._batch):
            woken = self._handle_batch() or woken
        if woken or len(self._ready) > ready_before:
            self._port.wakeup()

    def _take_ready(self, max_events: int) -> list[tuple[object, PollEvents]]:
        """Up to ``max_events`` readiness reports, with each socket's current data; a socket
        modified since its readiness was seen reports only what it still asks for."""
        ready: list[tuple[object, PollEvents]] = []
        pending = self._ready
        while pending and len(ready) < max_events:
            registration = next(iter(pending))
            modified, events = pending.pop(registration)
            if registration.modified != modified:
                events &= registration.interest | _ALWAYS_REPORTED
            if events:
                ready.append((registration.data, events))
        return ready

    def _flush_rearm(self) -> None:
        while self._rearm:
            registration = next(iter(self._rearm))
            self._update(registration)
            self._rearm.pop(registration, None)

    # -- life cycle --------------------------------------------------------------------------
    def wakeup(self) -> None:
        """End a :meth:`poll` blocked in another thread (it returns ``[]``). Thread-safe."""
        self._port.wakeup()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise PollerClosedError("operation on a closed AfdPoller")

    def __len__(self) -> int:
        """The number of registered sockets."""
        return len(self._registered)

    @property
    def outstanding_polls(self) -> int:
        """AFD polls issued and not yet dequeued: requests whose memory the kernel still owns
        (including cancelled ones, and those of sockets already unregistered). While the
        poller is open this equals the port's ``pending_count``."""
        with self._lock:
            return sum(1 for registration in (*self._registered.values(), *self._deleting)
                       if registration.socket.poll is not None)

    def close(self) -> None:
        """Cancel every poll, release the helper handles and the port. Idempotent.

        A thread blocked in :meth:`poll` is woken and returns ``[]``; nothing is closed
        under it (the port waits for it to leave the kernel call)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._registered.clear()
            self._deleting.clear()
            self._rearm.clear()
            self._ready.clear()
            # The port first: it cancels every pending poll through its helper handle, still
            # open (on Windows closing a helper does not end the polls it issued for other
            # sockets: ACTIVE_KB WD1), dequeues the cancellations and wakes a blocked poll().
            self._port.close()
            self._groups.close()
            self._batch.clear()

    def __enter__(self) -> AfdPoller:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
