"""The event loop's one completion port, shared by the AFD poller and the loop's own I/O.

``AfdEventLoop`` runs everything on one port: the AFD polls behind ``add_reader`` /
``add_writer`` (issued by its :class:`~afd.AfdPoller` on helper handles, keys 1, 2, ...), the
overlapped reads and writes of its pipe transports (:data:`IO_KEY`), the messages of the job
object its children run in (:data:`JOB_KEY`) and wake-ups (``WAKEUP_KEY``).

The poller dequeues the port inside ``selector.select()`` and knows only AFD polls: it would
drop any other completion it dequeued. :class:`LoopPort` therefore sets aside, in
:meth:`CompletionPort.dequeue` itself, every completion under the loop's own keys, and hands the
poller a wake-up packet in their place, so that ``select()`` returns at once and the loop
dispatches them (:meth:`LoopPort.take`) in the same iteration. Nothing is lost: a completion
is either given to the poller or kept here until the loop takes it.

Job messages carry a process id as their ``ApcContext`` (ACTIVE_KB E12); ``CompletionPort``
looks every ``ApcContext`` up in its table of pending operations. Operation addresses are heap
addresses far above any process id, so the look-up finds nothing; an ``iocp`` option to leave
a key's packets unmapped would remove even that assumption (ACTIVE_KB next steps).
"""

from __future__ import annotations

from iocp import WAKEUP_KEY, Completion, CompletionPort

__all__ = ["IO_KEY", "JOB_KEY", "LoopPort"]

IO_KEY = 0x6E74_6166_645F_696F
"""Key of the handles (pipes) whose overlapped I/O the loop issues itself."""
JOB_KEY = 0x6E74_6166_645F_6A6F
"""Key of the loop's job object: its messages say when a child process exits."""

_OWN_KEYS = frozenset({IO_KEY, JOB_KEY})
_WAKE = Completion(WAKEUP_KEY, 0, 0, None, 0)


class LoopPort(CompletionPort):
    """A :class:`CompletionPort` that keeps the loop's own completions for the loop."""

    def __init__(self) -> None:
        super().__init__()
        self._diverted: list[Completion] = []

    def dequeue(self, timeout: float | None = None, max_entries: int = 128) -> list[Completion]:
        completions = super().dequeue(timeout, max_entries)
        if not completions:
            return completions
        others = [completion for completion in completions if completion.key not in _OWN_KEYS]
        if len(others) == len(completions):
            return completions
        self._diverted.extend(
            completion for completion in completions if completion.key in _OWN_KEYS)
        others.append(_WAKE)  # the poller's wait ends: the loop has work
        return others

    @property
    def has_diverted(self) -> bool:
        """Whether completions of the loop's own are waiting for :meth:`take`."""
        return bool(self._diverted)

    def take(self) -> list[Completion]:
        """The loop's own completions dequeued since the last call, oldest first."""
        diverted, self._diverted = self._diverted, []
        return diverted
