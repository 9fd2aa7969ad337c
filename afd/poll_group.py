"""Poll groups: AFD helper handles shared by up to :data:`GROUP_SIZE` sockets each.

Polls are issued on a private handle to ``\\Device\\Afd`` associated with the completion port
(see :mod:`afd.helper`), not on the sockets themselves. One helper for every socket would do,
but on Windows the cost of cancelling a poll grows with the polls pending on the same handle
(trio#1280), so sockets are spread over helpers of :data:`GROUP_SIZE` each, as wepoll and mio
do. A socket keeps its group for as long as it is registered *and* until its last poll has
been dequeued: its membership is given back by :meth:`PollGroup.leave` only then (see
:class:`afd.socket_state.AfdSocket`).

Used by :class:`afd.AfdPoller` and meant for any other owner of AFD polls on a port (the exec
backend's listener and socket streams): one allocator per port.
"""

from __future__ import annotations

from iocp import CompletionPort

from .helper import AfdHelperHandle

__all__ = ["GROUP_SIZE", "PollGroup", "PollGroups"]

GROUP_SIZE = 32
"""Sockets per AFD helper handle (wepoll and mio use 32, trio 500). On Windows the cost of a
cancel grows with the polls pending on the handle (trio#1280); under Wine the measurement
(``bench.poller --only group_size``) shows no effect, since wineserver keeps one list of polls
for all handles. ACTIVE_KB.md D13 has the figures."""


class PollGroup:
    """One AFD helper handle and how many sockets use it."""

    __slots__ = ("_groups", "helper", "members")

    def __init__(self, groups: PollGroups, helper: AfdHelperHandle) -> None:
        self._groups = groups
        self.helper = helper
        self.members = 0

    def leave(self) -> None:
        """Give back one socket's place (once its last poll has been dequeued)."""
        self._groups._leave(self)

    def __repr__(self) -> str:
        return f"<PollGroup helper=0x{self.helper.handle:x} members={self.members}>"


class PollGroups:
    """Hands out places in poll groups on ``port``; helpers are opened on demand with ``key``
    (completions of their polls carry it) and closed by :meth:`close`.

    Not thread-safe by itself: its owner serialises :meth:`join` / :meth:`PollGroup.leave`
    (the poller does so under its lock; the exec backend runs on one thread).
    """

    def __init__(self, port: CompletionPort, key: int = 0, group_size: int = GROUP_SIZE) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, not {group_size}")
        self.port = port
        self.key = key
        self.group_size = group_size
        self._groups: list[PollGroup] = []
        self._with_room: dict[PollGroup, None] = {}  # insertion-ordered set

    def join(self) -> PollGroup:
        """A group with room for one more socket (a new helper handle if none has room)."""
        group = next(iter(self._with_room), None)
        if group is None:
            group = PollGroup(self, AfdHelperHandle(self.port, self.key))
            self._groups.append(group)
            self._with_room[group] = None
        group.members += 1
        if group.members >= self.group_size:
            del self._with_room[group]
        return group

    def _leave(self, group: PollGroup) -> None:
        if group.members <= 0:
            raise RuntimeError(f"{group!r} left more often than joined")
        group.members -= 1
        if group.helper.closed:
            return
        self._with_room[group] = None

    def __len__(self) -> int:
        """How many helper handles are open."""
        return len(self._groups)

    def close(self) -> None:
        """Close every helper handle. Close (or drain) the port first: on Windows closing a
        helper does not end the polls it issued for other sockets (ACTIVE_KB WD1; Wine ends
        them), so polls still pending would keep their memory until the port's close
        orphans it."""
        groups, self._groups = self._groups, []
        self._with_room.clear()
        for group in groups:
            group.helper.close()
