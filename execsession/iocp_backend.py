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
* Every dequeued completion reaches its owner: the loop dequeues into a list it keeps and
  removes a completion only once its owner has handled it, so Ctrl-C (or any exception)
  between the dequeue and the dispatch loses none; owners ignore a completion handed over
  twice. Each owner's handling runs isolated: an exception ends that owner's session only.
* Dequeues ask for one entry while completions come one at a time (under Wine a call for N
  that finds fewer makes one more request for nothing), a batch while several are waiting.
* The listener: an AFD ``AFD_POLL_ACCEPT`` poll (:class:`afd.AfdSocket` on the loop's
  :class:`afd.PollGroups`, helper handles associated with the same port).
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

from afd import AfdPollEvents, AfdPollOperation, AfdSocket, PollGroups, base_socket_handle
from iocp import WAKEUP_KEY, Completion, CompletionPort, Operation, PortClosedError, c_relay
from ntdll.libraries import running_under_wine

from .config import StderrMode
from .iocp_child import WindowsChild
from .iocp_streams import OverlappedStream, socket_stream
from .loop import Child, Loop, Stream

__all__ = ["INLINE_BUDGET", "IocpLoop"]

HELPER_KEY = 2
DEQUEUE_BATCH = 256
_WINE = running_under_wine()
PROBE_EVERY = 8
"""While dequeues find one completion each, every PROBE_EVERY-th still asks for a batch."""
INLINE_BUDGET = 64
"""Inline completions (no packet: skip-on-success) delivered between two waits on the port, at
most: beyond it the loop waits before running more callbacks."""

_ACCEPT = int(AfdPollEvents.ACCEPT)
RELAY_KEY_BASE = 0x7E1A_0000_0000
"""C relays' event keys are RELAY_KEY_BASE + n (no handle of the loop uses such a key)."""

RelayCallback = Callable[[int, c_relay.RelayInfo, bytes], None]
"""``(event, info, held)``: a C relay gave its direction back (``c_relay.EVENT_*``, the values
of ``loop.RELAY_*``), with its counters and the bytes it read but did not write (the callee
writes them itself)."""


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
        self._groups = PollGroups(self.port, HELPER_KEY)
        self._acceptors: dict[int, _AfdAcceptor] = {}
        self._batch: list[Completion] = []
        """Completions dequeued and not yet handed to their owners (see the module's notes)."""
        # Entries the next dequeue asks for (see _wait). On Windows one kernel transition
        # returns a whole batch, so single-entry asks would only add calls: Wine only.
        self._batch_size = 1 if _WINE else DEQUEUE_BATCH
        self._singles = 0  # dequeues in a row that found at most one entry
        self._relays: dict[int, tuple[c_relay.CRelay, RelayCallback]] = {}
        self._relay_serial = 0

    def inline_completed(self) -> None:
        """A stream's request completed at once (no packet): count it against the budget."""
        self._inline += 1
        self.inline_completions += 1

    def _wait_due(self) -> bool:
        return self._inline >= INLINE_BUDGET

    def _wait(self, timeout: float | None) -> None:
        self._inline = 0
        batch = self._batch
        if not batch:  # else: left over by an exception; hand it over before waiting again
            self.port.dequeue(timeout=timeout, max_entries=self._batch_size, into=batch)
            # Ask for one entry while completions come one at a time, a batch while several
            # are waiting: a call for N entries that finds k < N asks once more for nothing
            # (under Wine each ask is a wineserver request: ACTIVE_KB E15, issue 10), and a
            # relay of one session mostly has one completion to take per wait. A call for one
            # cannot tell whether more were waiting, so every PROBE_EVERY-th asks for a batch.
            # Under Wine only: on Windows one kernel transition returns the whole batch.
            if len(batch) > 1 or not _WINE:
                self._batch_size, self._singles = DEQUEUE_BATCH, 0
            else:
                self._singles += 1
                self._batch_size = DEQUEUE_BATCH if self._singles % PROBE_EVERY == 0 else 1
        while batch:
            self._dispatch(batch[0])
            del batch[0]

    def _dispatch(self, completion: Completion) -> None:
        """Hand one completion to its owner (a stream, an acceptor), isolated: an exception
        ends that owner's session only (:meth:`Loop._callback_failed`)."""
        operation = completion.operation
        if completion.key == WAKEUP_KEY or operation is None:
            if operation is None and completion.key in self._relays:
                self._relay_event(completion)
            return
        owner = operation.tag
        if owner is not None:
            try:
                owner.completed(operation)
            except Exception as error:
                self._callback_failed(owner.completed, error, owner)

    # -- C relays (ACTIVE_KB CR7) ---------------------------------------------------------------
    def relay(self, src: Stream, dst: Stream, size: int, on_event: RelayCallback, *,
              give_full: bool = False, give_small: int = 0) -> c_relay.CRelay | None:
        """Relay ``src`` -> ``dst`` in C (``None`` without the speedups: relay in Python) until
        an event, then ``on_event(event, info, held)`` on the loop. The caller must have no
        read of ``src`` nor write to ``dst`` in flight, and issues none until the event; it may
        :meth:`c_relay.CRelay.run` the returned relay again after one, and must
        :meth:`release_relay` it before closing either stream."""
        if not c_relay.available():
            return None
        if not isinstance(src, OverlappedStream) or not isinstance(dst, OverlappedStream):
            raise TypeError("C relays join this loop's overlapped streams")
        if src.reading or dst.writing:
            raise RuntimeError("a C relay needs the read of src and the write to dst free")
        self._relay_serial += 1
        token = RELAY_KEY_BASE + self._relay_serial
        relay = c_relay.CRelay(src.io, dst.io, token, size, give_full=give_full,
                               give_small=give_small)
        self._relays[token] = (relay, on_event)
        relay.run()
        return relay

    def release_relay(self, relay: c_relay.CRelay) -> None:
        """Forget ``relay`` and free it (a running one is cancelled; C frees it once its last
        completion was seen; no event follows)."""
        self._relays.pop(relay.token, None)
        relay.close()

    def _relay_event(self, completion: Completion) -> None:
        relay, callback = self._relays[completion.key]
        info = relay.info()
        held = relay.take()
        self.inline_completions += info.inline
        try:
            callback(completion.status, info, held)
        except Exception as error:
            self._callback_failed(callback, error, None)

    def relay_error(self, status: int) -> OSError:
        """A C relay's status is the failing request's NTSTATUS."""
        return OSError(f"NTSTATUS 0x{status:08X}")

    def _wakeup(self) -> None:
        try:
            self.port.wakeup()
        except (PortClosedError, OSError):
            pass

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
        for relay, _callback in list(self._relays.values()):
            relay.close()  # cancelled; the port's close drains them
        self._relays.clear()
        # The port first: it cancels every pending request (the listener's polls through their
        # helper handles, still open: on Windows closing a helper does not end the polls it
        # issued for other sockets, ACTIVE_KB WD1) and dequeues the cancellations.
        self.port.close()
        self._groups.close()
        self._batch.clear()


class _AfdAcceptor:
    """Calls back whenever a listening socket has a connection waiting (``AFD_POLL_ACCEPT``),
    with the same one-poll-per-socket state machine as :class:`afd.AfdPoller`."""

    def __init__(self, loop: IocpLoop, listener: socket.socket,
                 callback: Callable[[], None]) -> None:
        listener.setblocking(False)
        self._loop = loop
        self._callback = callback
        self._closed = False
        group = loop._groups.join()
        self._socket = AfdSocket(group, base_socket_handle(listener), owner=self)
        try:
            self._socket.update(_ACCEPT)
        except BaseException:
            self._closed = True
            self._socket.delete()
            raise

    def completed(self, operation: Operation) -> None:
        assert isinstance(operation, AfdPollOperation)
        if not self._socket.completed(operation):
            return  # handed over already (or a poll replaced since)
        if self._closed:
            return
        try:
            self._callback()
        except Exception as error:  # logged; the listener is watched again all the same
            self._loop._callback_failed(self._callback, error)
        if not self._closed:
            self._socket.update(_ACCEPT)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._socket.delete()
