"""The IOCP backend (Windows): one completion port per loop carries everything.

This module is the loop; :mod:`execsession.iocp_streams` has the streams (the socket and the
child's pipes, on ``iocp``'s overlapped I/O with skip-on-success) and
:mod:`execsession.iocp_child` the child (its pipes, its job object).

* A request that completes at once queues no packet (skip-on-success) and is delivered through
  ``call_soon``; one that is pending comes out of :meth:`IocpLoop._wait`'s dequeue.
* Inline completions are budgeted: after :data:`INLINE_BUDGET` of them without a wait, the next
  iteration waits on the port (with no timeout if callbacks are ready) before running more
  callbacks, so a session whose handles are always ready cannot starve the completions of the
  others (nor the listener's accepts).
* The listener: an AFD ``AFD_POLL_ACCEPT`` poll on a helper handle associated with the same
  port.
* Memory the kernel may write (an ``OVERLAPPED``, a read buffer, a poll's ``AFD_POLL_INFO``)
  belongs to an :class:`iocp.Operation` that the port keeps alive until its completion is
  dequeued, so a stream closed with requests pending simply ignores their completions.
"""

from __future__ import annotations

import sys

if sys.platform != "win32":  # pragma: no cover - backends.open_loop() refuses first
    raise ImportError("execsession.iocp_backend needs Windows (or Wine)")

import socket
from collections.abc import Callable, Sequence

from afd import AfdHelperHandle, AfdPollEvents, AfdPollOperation, base_socket_handle
from iocp import WAKEUP_KEY, CompletionPort, Operation, PortClosedError

from .config import StderrMode
from .iocp_child import WindowsChild
from .iocp_streams import socket_stream
from .loop import Child, Loop, Stream

__all__ = ["INLINE_BUDGET", "IocpLoop"]

HELPER_KEY = 2
GROUP_SIZE = 32
"""Listeners per AFD helper handle (as ``afd.AfdPoller``: the cost of a cancel grows with the
polls pending on one handle)."""
DEQUEUE_BATCH = 256
INLINE_BUDGET = 64
"""Inline completions (no packet: skip-on-success) delivered between two waits on the port, at
most: beyond it the loop waits before running more callbacks."""


class _HelperSlot:
    def __init__(self, port: CompletionPort) -> None:
        self.helper = AfdHelperHandle(port, HELPER_KEY)
        self.members = 0


class IocpLoop(Loop):
    """:class:`Loop` on one I/O completion port (sockets, pipes, the listener's AFD polls,
    wake-ups)."""

    backend = "iocp"
    WRITES_COMPLETE_LATER = False  # with skip-on-success most writes complete at once: write
    # whole buffers (fewer calls per MiB: ACTIVE_KB E15), not halves that leave room to overlap
    MAX_WAIT = 0.5  # Python runs signal handlers (Ctrl-C) only between waits

    def __init__(self) -> None:
        super().__init__()
        self.port = CompletionPort()
        self._inline = 0
        self.inline_completions = 0
        """Requests of this loop's streams that completed at once (no packet), in all."""
        self._slots: list[_HelperSlot] = []
        self._acceptors: dict[int, _AfdAcceptor] = {}

    def inline_completed(self) -> None:
        """A stream's request completed at once (no packet): count it against the budget."""
        self._inline += 1
        self.inline_completions += 1

    def _wait_due(self) -> bool:
        return self._inline >= INLINE_BUDGET

    def _wait(self, timeout: float | None) -> None:
        self._inline = 0
        for completion in self.port.dequeue(timeout=timeout, max_entries=DEQUEUE_BATCH):
            if completion.key == WAKEUP_KEY or completion.operation is None:
                continue
            owner = completion.operation.tag
            if owner is not None:
                owner.completed(completion.operation)

    def _wakeup(self) -> None:
        try:
            self.port.wakeup()
        except (PortClosedError, OSError):
            pass

    def acquire_helper(self) -> _HelperSlot:
        for slot in self._slots:
            if slot.members < GROUP_SIZE:
                slot.members += 1
                return slot
        slot = _HelperSlot(self.port)
        slot.members = 1
        self._slots.append(slot)
        return slot

    # -- factories -----------------------------------------------------------------------------
    def socket_stream(self, sock: socket.socket) -> Stream:
        return socket_stream(self, sock)

    def spawn(self, command: Sequence[str] | str, *, shell: bool, stderr: StderrMode,
              pipe_sizes: tuple[int, int, int], cwd: str | None = None,
              env: dict[str, str] | None = None) -> Child:
        return WindowsChild(self, command, shell=shell, stderr=stderr, pipe_sizes=pipe_sizes,
                             cwd=cwd, env=env)

    def add_acceptor(self, listener: socket.socket, callback: Callable[[], None]) -> None:
        self._acceptors[listener.fileno()] = _AfdAcceptor(self, listener, callback)

    def remove_acceptor(self, listener: socket.socket) -> None:
        acceptor = self._acceptors.pop(listener.fileno(), None)
        if acceptor is not None:
            acceptor.close()

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        for slot in self._slots:
            slot.helper.close()  # the kernel cancels the polls still pending on it
        self.port.close()  # dequeues those cancellations (and any other late completion)
        self._slots.clear()


class _AfdAcceptor:
    """Calls back whenever a listening socket has a connection waiting (``AFD_POLL_ACCEPT``)."""

    def __init__(self, loop: IocpLoop, listener: socket.socket,
                 callback: Callable[[], None]) -> None:
        listener.setblocking(False)
        self._loop = loop
        self._base = base_socket_handle(listener)
        self._slot = loop.acquire_helper()
        self._callback = callback
        self._closed = False
        self._poll: AfdPollOperation | None = None
        self._issue()

    def _issue(self) -> None:
        self._poll = self._slot.helper.poll([(self._base, AfdPollEvents.ACCEPT)], tag=self)

    def completed(self, operation: Operation) -> None:
        self._poll = None
        if self._closed:
            return
        self._callback()
        if not self._closed:
            self._issue()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._poll is not None:
            try:
                self._slot.helper.cancel(self._poll)
            except OSError:
                pass
        self._slot.members -= 1
