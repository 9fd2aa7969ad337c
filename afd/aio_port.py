"""The event loop's one completion port, shared by the AFD poller and the loop's own I/O.

``AfdEventLoop`` runs everything on one port: the AFD polls behind ``add_reader`` /
``add_writer`` (issued by its :class:`~afd.AfdPoller` on helper handles, keys 1, 2, ...), the
overlapped reads and writes of its pipe transports (:data:`IO_KEY`), the messages of the job
object its children run in (:data:`JOB_KEY`) and wake-ups (``WAKEUP_KEY``).

The poller dequeues the port inside ``selector.select()`` and knows only AFD polls: it would
drop any other completion it dequeued. :class:`LoopPort` therefore sets aside, in
:meth:`CompletionPort.dequeue` itself, every completion under the loop's own keys, and hands the
poller a wake-up packet in their place, so that ``select()`` returns at once and the loop
dispatches them (:meth:`LoopPort.dispatch`) in the same iteration. Nothing is lost: a completion
is either given to the poller or kept here until the loop takes it.

Job messages carry a process id as their ``ApcContext`` (ACTIVE_KB E12): :data:`JOB_KEY` is a
raw key of the port (``CompletionPort.add_raw_key``), so a process id is never looked up as an
operation's address.
"""

from __future__ import annotations

from collections.abc import Callable

from iocp import WAKEUP_KEY, Completion, CompletionPort
from iocp.port import DEFAULT_BATCH

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
        self._last_poll_empty = True  # whether the last zero-timeout dequeue found nothing
        self.add_raw_key(JOB_KEY)  # a job's messages carry a process id, not an operation

    def dequeue(self, timeout: float | None = None, max_entries: int = DEFAULT_BATCH,
                into: list[Completion] | None = None) -> list[Completion]:
        result: list[Completion] = [] if into is None else into
        start = len(result)
        if timeout == 0:
            # The loop polls with timeout 0 whenever callbacks are ready; under Wine a
            # zero-timeout dequeue that finds the port empty is two server requests (the
            # removal that finds nothing, then a zero wait), a look at the depth one. After a
            # poll that found nothing, look first.
            if self._last_poll_empty and not self.has_queued():
                return result
            super().dequeue(timeout, max_entries, into=result)
            self._last_poll_empty = len(result) == start
        else:
            super().dequeue(timeout, max_entries, into=result)
        new = result[start:]
        if not any(completion.key in _OWN_KEYS for completion in new):
            return result
        # Kept here first, then taken out of the poller's list: an exception in between
        # leaves a completion in both, and the poller ignores what is not an AFD poll.
        self._diverted.extend(completion for completion in new if completion.key in _OWN_KEYS)
        result[start:] = [completion for completion in new if completion.key not in _OWN_KEYS]
        result.append(_WAKE)  # the poller's wait ends: the loop has work
        return result

    @property
    def has_diverted(self) -> bool:
        """Whether completions of the loop's own are waiting for :meth:`dispatch`."""
        return bool(self._diverted)

    def dispatch(self, handle: Callable[[Completion], None]) -> None:
        """Hand the loop's own completions to ``handle``, oldest first; each leaves the list
        only once ``handle`` returned, so an exception loses none."""
        diverted = self._diverted
        while diverted:
            handle(diverted[0])
            del diverted[0]
