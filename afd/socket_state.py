"""One socket's AFD poll: wepoll's socket state as an explicit state machine.

A socket has **at most one** ``IOCTL_AFD_POLL`` outstanding: two polls on one socket get their
completions mixed up by the kernel (trio#52, wepoll#35). :class:`AfdSocket` keeps that rule
for whoever owns the socket (the poller's registrations, the exec backend's streams and
listener):

* ``IDLE`` — no poll outstanding. :meth:`AfdSocket.update` issues one for the events wanted.
* ``POLL_PENDING`` — a poll asking for :attr:`AfdSocket.asked` is outstanding. If the events
  wanted are covered by it, it is left alone (should it fire for an event no longer wanted,
  the owner re-arms with the narrower set); otherwise it is cancelled.
* ``CANCEL_PENDING`` — the poll was cancelled; its completion (``STATUS_CANCELLED``, or its
  real result if it won the race) has not been dequeued. Nothing new is issued until it is:
  the poll buffer belongs to the kernel until then.

plus **delete pending** (:meth:`AfdSocket.delete`): the owner is done with the socket; if a
poll is outstanding it is cancelled, and the socket's place in its poll group is given back
only when that poll's completion has been dequeued (:meth:`AfdSocket.completed`).

The poll's operation is created *before* the call that issues it and recorded at once, so an
exception after the kernel took the request (KeyboardInterrupt) still leaves the state
``POLL_PENDING`` with the right operation; only the call's own failure (``NtStatusError``:
the handle is no socket, or was closed) returns the state to ``IDLE``.

:meth:`AfdSocket.completed` is idempotent: a completion whose operation is not the current
poll (handled already, or of a poll replaced since) returns ``False`` and changes nothing, so
a consumer interrupted while handling a batch can hand the same completion over again.

Not thread-safe by itself: the owner serialises calls (the poller under its lock).
"""

from __future__ import annotations

import enum

from .helper import AfdPollOperation
from .poll_group import PollGroup

__all__ = ["AfdSocket", "SocketState"]


class SocketState(enum.Enum):
    IDLE = "idle"
    """No poll outstanding."""
    POLL_PENDING = "poll pending"
    """A poll is outstanding and not cancelled."""
    CANCEL_PENDING = "cancel pending"
    """The outstanding poll was cancelled; its completion has not been dequeued yet."""


class AfdSocket:
    """One socket's single outstanding AFD poll on a :class:`~afd.poll_group.PollGroup`.

    ``base`` is the socket's base handle (:func:`afd.base_socket_handle`); ``owner`` is the
    tag of every poll issued (what the consumer of the port finds in ``completion.tag``;
    this object itself if ``None``). The caller joined ``group`` for this socket; the place is
    given back once the socket is deleted and has no poll outstanding.
    """

    __slots__ = ("_cancelling", "_released", "asked", "base", "delete_pending", "group",
                 "owner", "poll")

    def __init__(self, group: PollGroup, base: int, owner: object = None) -> None:
        self.group = group
        self.base = base
        self.owner = self if owner is None else owner
        self.poll: AfdPollOperation | None = None
        """The outstanding poll, from the moment it may have reached the kernel until its
        completion is handed to :meth:`completed`."""
        self.asked = 0
        """The AFD events the outstanding poll asks for."""
        self.delete_pending = False
        self._cancelling = False
        self._released = False

    @property
    def state(self) -> SocketState:
        if self.poll is None:
            return SocketState.IDLE
        return SocketState.CANCEL_PENDING if self._cancelling else SocketState.POLL_PENDING

    def update(self, wanted: int) -> None:
        """Make the outstanding poll ask for ``wanted`` (``AfdPollEvents`` bits; 0: nothing
        new is issued, an outstanding poll is left to complete).

        Issues a poll when idle, cancels one that does not cover ``wanted``, and waits for a
        cancellation to be dequeued before issuing again. Raises ``NtStatusError`` if the
        issuing call fails (the socket is closed or no socket): the state is then ``IDLE``.
        """
        if self.delete_pending:
            raise ValueError(f"{self!r} was deleted")
        poll = self.poll
        if poll is not None:
            if wanted & ~self.asked:
                self.cancel()  # re-issued when the cancellation is handed to completed()
            return
        if not wanted:
            return
        operation = self.group.helper.new_poll(self.owner)
        self._cancelling = False
        self.asked = wanted
        self.poll = operation  # recorded before the call: see the module's essay
        try:
            self.group.helper.issue_one(operation, self.base, wanted)
        except BaseException:
            if not operation.pending:  # the call's own failure: nothing reached the kernel
                self.poll = None
                self.asked = 0
            raise

    def cancel(self) -> None:
        """Cancel the outstanding poll (no-op when idle or already cancelling)."""
        poll = self.poll
        if poll is None or self._cancelling:
            return
        self._cancelling = True
        try:
            self.group.helper.cancel(poll)
        except OSError:
            pass  # the helper was closed: the kernel cancels its polls itself

    def completed(self, operation: AfdPollOperation) -> bool:
        """Hand over a dequeued completion of a poll issued here. Returns ``False`` (and
        changes nothing) if ``operation`` is not the outstanding poll. Afterwards the state is
        ``IDLE``; if deleted, the group place is given back."""
        if operation is not self.poll:
            return False
        self.poll = None
        if self.delete_pending:
            self._release()
        return True

    def delete(self) -> None:
        """The owner is done with the socket: cancel the outstanding poll, and give the group
        place back now (idle) or when its completion is handed to :meth:`completed`."""
        self.delete_pending = True
        if self.poll is None:
            self._release()
        else:
            self.cancel()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.group.leave()

    def __repr__(self) -> str:
        deleted = ", delete pending" if self.delete_pending else ""
        return f"<AfdSocket base=0x{self.base:x} {self.state.value}{deleted}>"
