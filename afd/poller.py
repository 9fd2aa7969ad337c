"""AfdPoller: epoll-like readiness for any number of sockets, on AFD polls and one port.

Each registered socket has at most one outstanding ``IOCTL_AFD_POLL`` (two polls on one socket
get their completions mixed up by the kernel: trio#52, wepoll#35). Polls are issued on AFD helper
handles shared by up to :data:`GROUP_SIZE` sockets (poll groups). A change of interest that the
pending poll does not cover cancels it; the new poll is issued once the cancellation has been
dequeued, so a socket's state is never freed while the kernel may still write its poll buffer.

Level-triggered: after each completion the socket is re-armed before the next wait. With
``oneshot=True`` it is disarmed after reporting once, until :meth:`AfdPoller.modify`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType

from iocp import WAKEUP_KEY, Completion, CompletionPort, validate_timeout
from ntdll import NtStatusError
from ntdll.status import STATUS_INVALID_HANDLE, STATUS_OBJECT_TYPE_MISMATCH

from .base_handle import SocketLike, base_socket_handle, check_socket, socket_handle
from .events import PollEvents, afd_events_for, poll_events_from
from .flags import AfdPollEvents
from .helper import AfdHelperHandle, AfdPollOperation

__all__ = ["GROUP_SIZE", "AfdPoller", "PollerClosedError"]

GROUP_SIZE = 32
"""Sockets per AFD helper handle (wepoll and mio use 32, trio 500). On Windows the cost of a
cancel grows with the polls pending on the handle (trio#1280); under Wine the measurement
(``bench.poller --only group_size``) shows no effect, since wineserver keeps one list of polls
for all handles. ACTIVE_KB.md D13 has the figures."""

DEFAULT_MAX_EVENTS = 1024

_LOCAL_CLOSE = int(AfdPollEvents.LOCAL_CLOSE)
# What an AFD poll naming a non-socket fails with (seen under Wine: F11).
_NOT_A_SOCKET = frozenset({STATUS_INVALID_HANDLE, STATUS_OBJECT_TYPE_MISMATCH})


class PollerClosedError(ValueError):
    """The poller was used after ``close()``."""


class _PollGroup:
    """One AFD helper handle and how many registered sockets use it."""

    def __init__(self, port: CompletionPort, key: int) -> None:
        self.helper = AfdHelperHandle(port, key)
        self.members = 0


@dataclass(eq=False)
class _Registration:
    handle: int
    base: int
    interest: PollEvents
    data: object
    oneshot: bool
    group: _PollGroup
    poll: AfdPollOperation | None = None
    asked: int = 0  # the AFD events the pending poll asks for
    cancelling: bool = False
    deleted: bool = False
    modified: int = 0  # counts modify() calls


class AfdPoller:
    """An epoll-like readiness poller for sockets, on AFD polls completing on one port.

    ``register``/``modify``/``unregister`` may be called from any thread, also while another
    thread is blocked in :meth:`poll`; :meth:`wakeup` ends such a wait.
    """

    def __init__(self, group_size: int = GROUP_SIZE) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, not {group_size}")
        self._group_size = group_size
        self._port = CompletionPort()
        self._lock = threading.RLock()
        self._registered: dict[int, _Registration] = {}
        self._groups: list[_PollGroup] = []
        self._groups_with_room: dict[_PollGroup, None] = {}  # insertion-ordered set
        self._rearm: dict[_Registration, None] = {}
        self._outstanding = 0
        # Readiness dequeued outside poll() (see register), reported by the next poll().
        self._backlog: list[tuple[_Registration, int, PollEvents]] = []
        self._closed = False

    # -- registration ---------------------------------------------------------------------
    def register(self, sock: SocketLike | int, events: PollEvents | int, data: object = None,
                 *, oneshot: bool = False) -> None:
        """Watch ``sock`` for ``events``; ``data`` is returned with its readiness.

        Raises ``FileExistsError`` if already registered, ``ValueError`` for a closed socket,
        :class:`~afd.NotASocketError` for a non-socket.

        A socket closed while registered leaves the set when its close is dequeued. If its
        handle value has already been reused for ``sock``, the queued completions are collected
        first (so the close is seen) before ``FileExistsError`` is decided.
        """
        handle = socket_handle(sock)
        with self._lock:
            self._check_open()
            if handle in self._registered:
                self._collect_now()
            if handle in self._registered:
                raise FileExistsError(f"socket {handle:#x} is already registered")
            interest = PollEvents(events)
            # With a poll to issue, a non-socket is found by the poll itself (one call fewer).
            polls_now = bool(afd_events_for(interest))
            base = base_socket_handle(handle, verify=not polls_now)
            group = self._join_group()
            registration = _Registration(handle, base, interest, data, oneshot, group)
            self._registered[handle] = registration
            try:
                self._update(registration, raise_errors=True)
            except BaseException as error:
                del self._registered[handle]
                self._leave_group(group)
                if isinstance(error, NtStatusError) and error.ntstatus in _NOT_A_SOCKET:
                    check_socket(handle)  # raises NotASocketError, saying what the handle is
                raise

    def modify(self, sock: SocketLike | int, events: PollEvents | int, data: object = None,
               *, oneshot: bool | None = None) -> None:
        """Change the events (and ``data``; ``oneshot`` if given) of a registered socket.

        Re-arms a one-shot socket. Raises ``FileNotFoundError`` if it is not registered.
        """
        handle = socket_handle(sock)
        with self._lock:
            self._check_open()
            registration = self._lookup(handle)
            registration.interest = PollEvents(events)
            registration.data = data
            registration.modified += 1
            if oneshot is not None:
                registration.oneshot = oneshot
            self._update(registration)

    def unregister(self, sock: SocketLike | int) -> None:
        """Stop watching ``sock``. Raises ``FileNotFoundError`` if it is not registered."""
        handle = sock if isinstance(sock, int) else sock.fileno()
        with self._lock:
            self._check_open()
            registration = self._lookup(handle)
            del self._registered[handle]
            registration.deleted = True
            self._rearm.pop(registration, None)
            if registration.poll is None:
                self._free(registration)
            elif not registration.cancelling:
                self._cancel(registration)

    def _lookup(self, handle: int) -> _Registration:
        registration = self._registered.get(handle)
        if registration is None:
            raise FileNotFoundError(f"socket {handle:#x} is not registered")
        return registration

    def _join_group(self) -> _PollGroup:
        """A poll group with room for one more socket (a new helper handle if none has)."""
        group = next(iter(self._groups_with_room), None)
        if group is None:
            group = _PollGroup(self._port, len(self._groups) + 1)
            self._groups.append(group)
            self._groups_with_room[group] = None
        group.members += 1
        if group.members >= self._group_size:
            del self._groups_with_room[group]
        return group

    def _leave_group(self, group: _PollGroup) -> None:
        group.members -= 1
        self._groups_with_room[group] = None

    def _free(self, registration: _Registration) -> None:
        self._leave_group(registration.group)

    # -- issuing polls ----------------------------------------------------------------------
    def _update(self, registration: _Registration, raise_errors: bool = False) -> None:
        """Make the socket's outstanding poll match its interest (called under the lock)."""
        if registration.deleted:
            return
        wanted = int(afd_events_for(registration.interest))
        if registration.poll is not None:
            if registration.cancelling:
                return  # the new poll is issued when the cancellation is dequeued
            if wanted and (wanted & ~registration.asked) == 0:
                # The pending poll covers what is wanted; if it fires for an event no longer
                # wanted, the re-armed poll asks for the narrower set.
                return
            self._cancel(registration)
            return
        if not wanted:
            return
        try:
            registration.poll = registration.group.helper.poll(
                [(registration.base, wanted)], tag=registration)
        except NtStatusError:
            # The socket was closed (its handle is no longer an AFD endpoint).
            if raise_errors:
                raise
            self._drop_closed(registration)
            return
        registration.asked = wanted
        self._outstanding += 1

    def _cancel(self, registration: _Registration) -> None:
        assert registration.poll is not None
        registration.cancelling = True
        registration.group.helper.cancel(registration.poll)

    def _drop_closed(self, registration: _Registration) -> None:
        if self._registered.get(registration.handle) is registration:
            del self._registered[registration.handle]
        if not registration.deleted:
            registration.deleted = True
            self._free(registration)

    # -- waiting ---------------------------------------------------------------------------
    def poll(self, timeout: float | None = None,
             max_events: int = DEFAULT_MAX_EVENTS) -> list[tuple[object, PollEvents]]:
        """Wait until a socket is ready, :meth:`wakeup` is called, or ``timeout`` seconds pass
        (``None``: forever; 0: do not wait). Returns ``(data, events)`` pairs, at most
        ``max_events``; ``[]`` on timeout or wake-up."""
        validate_timeout(timeout)
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, not {max_events}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                self._check_open()
                self._flush_rearm()
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            completions = self._port.dequeue(timeout=remaining, max_entries=max_events)
            ready, woken = self._process(completions)
            if self._backlog:
                ready = self._take_backlog() + ready
            if ready or woken or (deadline is not None and time.monotonic() >= deadline):
                return ready

    def _collect_now(self) -> None:
        """Dequeue what has completed without waiting; its readiness waits in the backlog for
        the next poll() (a thread blocked in poll() is woken to report it)."""
        ready = []
        woken = False
        while True:
            completions = self._port.dequeue(timeout=0)
            if not completions:
                break
            for completion in completions:
                if completion.key == WAKEUP_KEY:
                    woken = True  # not ours: passed on to poll() below
                    continue
                registration = completion.tag
                if isinstance(completion.operation, AfdPollOperation) and isinstance(
                        registration, _Registration):
                    events = self._complete(registration, completion.operation)
                    if events:
                        ready.append((registration, registration.modified, events))
        if ready:
            self._backlog.extend(ready)
        if ready or woken:
            self._port.wakeup()

    def _take_backlog(self) -> list[tuple[object, PollEvents]]:
        """The backlog as poll() reports it: with each socket's current data and interest
        (it may have been modified or unregistered since)."""
        with self._lock:
            backlog, self._backlog = self._backlog, []
            ready = []
            for registration, modified, events in backlog:
                if registration.deleted:
                    continue
                if registration.modified != modified:
                    events &= registration.interest | PollEvents.ERR | PollEvents.HUP
                if events:
                    ready.append((registration.data, events))
            return ready

    def _flush_rearm(self) -> None:
        pending, self._rearm = self._rearm, {}
        for registration in pending:
            self._update(registration)

    def _process(self, completions: list[Completion]
                 ) -> tuple[list[tuple[object, PollEvents]], bool]:
        ready: list[tuple[object, PollEvents]] = []
        woken = False
        with self._lock:
            for completion in completions:
                if completion.key == WAKEUP_KEY:
                    woken = True
                    continue
                operation = completion.operation
                registration = completion.tag
                if not isinstance(operation, AfdPollOperation) or not isinstance(
                        registration, _Registration):
                    continue
                events = self._complete(registration, operation)
                if events:
                    ready.append((registration.data, events))
        return ready, woken

    def _complete(self, registration: _Registration,
                  operation: AfdPollOperation) -> PollEvents:
        self._outstanding -= 1
        registration.poll = None
        registration.cancelling = False
        registration.asked = 0
        if registration.deleted:
            self._free(registration)
            return PollEvents(0)
        if operation.cancelled:
            self._rearm[registration] = None
            return PollEvents(0)
        if not operation.succeeded:
            # The poll itself failed: report the socket as in error (its next I/O tells why)
            # and do not re-arm, which would fail again at once.
            return PollEvents.IN | PollEvents.OUT | PollEvents.ERR
        reported = operation.reported_events()
        if reported & _LOCAL_CLOSE:
            self._drop_closed(registration)
            return PollEvents(0)
        events = poll_events_from(reported, registration.interest)
        if events and registration.oneshot:
            registration.interest = PollEvents(0)
        self._rearm[registration] = None
        return events

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
        (including cancelled ones, and those of sockets already unregistered)."""
        return self._outstanding

    def close(self) -> None:
        """Cancel every poll, release the helper handles and the port. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._registered.clear()
            self._rearm.clear()
            self._backlog.clear()
            for group in self._groups:
                group.helper.close()  # the kernel cancels the polls pending on it
            self._port.close()  # dequeues those cancellations
            self._groups.clear()
            self._groups_with_room.clear()
            self._outstanding = 0

    def __enter__(self) -> AfdPoller:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
