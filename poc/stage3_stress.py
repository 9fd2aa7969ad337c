"""Stage 3: stress and cancellation through the AfdPoller.

1. A poll for ``AFD_POLL_ACCEPT`` on a listening socket is cancelled while pending: it completes
   with ``STATUS_CANCELLED``, reports no socket, and a second cancel finds nothing to cancel.
2. ``--clients`` clients (default 1,000) connect at once to an echo server; each sends a message,
   checks the echo and closes. Server and clients share one single-threaded loop on one
   ``AfdPoller`` (so 2,000 sockets are registered at the peak).
3. ``--cycles`` connect/disconnect cycles (default 1,000; ``--long``: 10,000), ``--concurrency``
   at a time: connect, close at once; the server sees each accept and each end.

Every socket is closed and unregistered at the end; the poller must hold only the listener.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
import time
from collections.abc import Callable, Sequence

from afd import AfdHelperHandle, AfdPoller, AfdPollEvents, PollEvents, base_socket_handle
from iocp import CompletionPort
from ntdll import status_name
from ntdll.status import STATUS_CANCELLED

from .clients import accept_waiting, listening_socket
from .report import Report, run_stage

P = PollEvents
MESSAGE_SIZE = 64
DEFAULT_CLIENTS = 1000
DEFAULT_CYCLES = 1000
LONG_CYCLES = 10_000
DEFAULT_CONCURRENCY = 100
DEADLINE = 300.0
_CONNECT_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, 10035}  # 10035: WSAEWOULDBLOCK


def cancel_pending_accept(report: Report) -> None:
    """Part 1: cancel a pending ACCEPT poll on a helper handle."""
    with CompletionPort() as port, AfdHelperHandle(port, key=7) as helper, \
            listening_socket() as listener:
        poll = helper.poll([(base_socket_handle(listener), AfdPollEvents.ACCEPT)], tag="accept")
        report.check(poll.pending, "the ACCEPT poll is pending (nobody has connected)")
        report.check(port.dequeue(timeout=0.1) == [], "no completion before the cancel")
        report.check(helper.cancel(poll), "NtCancelIoFileEx found the pending poll")
        completions = port.dequeue(timeout=5)
        report.require(len(completions) == 1, "one completion after the cancel", completions)
        completion = completions[0]
        report.check(completion.operation is poll and completion.tag == "accept",
                     "the completion is the cancelled poll's", completion)
        report.check(completion.status == STATUS_CANCELLED,
                     "it completed with STATUS_CANCELLED",
                     f"{status_name(completion.status)} ({completion.status:#010x})")
        report.check(poll.results == [], "a cancelled poll reports no socket", poll.results)
        report.check(not helper.cancel(poll), "a second cancel finds nothing to cancel")


class Counters:
    def __init__(self) -> None:
        self.accepted = 0
        self.server_closed = 0
        self.clients_done = 0
        self.clients_started = 0
        self.echo_mismatches = 0
        self.errors: list[str] = []


class StressLoop:
    """One AfdPoller; each registered socket's data is the callable that handles its events."""

    def __init__(self, report: Report, echo: bool) -> None:
        self.report = report
        self.echo = echo
        self.poller = AfdPoller()
        self.listener = listening_socket(backlog=2048)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.counters = Counters()
        self.sockets: set[socket.socket] = {self.listener}
        self.poller.register(self.listener, P.IN, self.on_listener)

    # -- server side --------------------------------------------------------------------
    def on_listener(self, events: PollEvents) -> None:
        for conn in accept_waiting(self.listener):
            self.counters.accepted += 1
            self.sockets.add(conn)
            pending = bytearray()
            self.poller.register(conn, P.IN, self.server_handler(conn, pending))

    def server_handler(self, conn: socket.socket,
                       pending: bytearray) -> Callable[[PollEvents], None]:
        def on_events(events: PollEvents) -> None:
            if events & P.IN:
                try:
                    while data := conn.recv(65536):
                        if self.echo:
                            pending.extend(data)
                    else:
                        self.close(conn)
                        self.counters.server_closed += 1
                        return
                except BlockingIOError:
                    pass
                except ConnectionError:  # a client may reset its end
                    self.close(conn)
                    self.counters.server_closed += 1
                    return
            if pending:
                try:
                    sent = conn.send(pending)
                    del pending[:sent]
                except BlockingIOError:
                    pass
            self.poller.modify(conn, P.IN | (P.OUT if pending else P(0)), on_events)
        return on_events

    # -- client side ----------------------------------------------------------------------
    def start_client(self, number: int) -> None:
        client = socket.socket()
        client.setblocking(False)
        code = client.connect_ex(self.address)
        if code not in _CONNECT_IN_PROGRESS and code != 0:
            client.close()
            self.counters.errors.append(f"client {number}: connect_ex returned {code}")
            return
        self.counters.clients_started += 1
        self.sockets.add(client)
        message = f"client {number:06d} ".encode().ljust(MESSAGE_SIZE, b".")
        self.poller.register(client, P.OUT, self.client_handler(client, number, message))

    def client_handler(self, client: socket.socket, number: int,
                       message: bytes) -> Callable[[PollEvents], None]:
        received = bytearray()
        state = {"sent": 0}

        def on_events(events: PollEvents) -> None:
            if events & P.ERR:
                error = client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                self.counters.errors.append(f"client {number}: error {error} ({events!r})")
                self.close(client)
                return
            if not self.echo:  # connect/disconnect cycle: connected, so close
                self.close(client)
                self.counters.clients_done += 1
                return
            if events & P.OUT and state["sent"] < len(message):
                state["sent"] += client.send(message[state["sent"]:])
            if events & P.IN:
                try:
                    received.extend(client.recv(65536))
                except BlockingIOError:
                    pass
            if len(received) >= len(message):
                if bytes(received) != message:
                    self.counters.echo_mismatches += 1
                self.close(client)
                self.counters.clients_done += 1
                return
            wanted = P.IN | (P.OUT if state["sent"] < len(message) else P(0))
            self.poller.modify(client, wanted, on_events)
        return on_events

    # -- loop -------------------------------------------------------------------------------
    def close(self, sock: socket.socket) -> None:
        self.poller.unregister(sock)
        self.sockets.discard(sock)
        sock.close()

    def run(self, total: int, concurrency: int, deadline: float) -> float:
        """Start ``total`` clients, at most ``concurrency`` at a time; serve until every one
        is done and the server has closed its end. Returns the seconds taken."""
        started = time.perf_counter()
        next_client = 0
        counters = self.counters
        while time.monotonic() < deadline:
            active = counters.clients_started - counters.clients_done
            while next_client < total and active < concurrency:
                self.start_client(next_client)
                next_client += 1
                active += 1
            finished_clients = counters.clients_done + len(counters.errors)
            if finished_clients >= total and counters.server_closed >= counters.accepted:
                break
            for handler, events in self.poller.poll(timeout=1.0):
                assert callable(handler)
                handler(events)
        return time.perf_counter() - started

    def shut_down(self) -> None:
        for sock in list(self.sockets):
            if sock is not self.listener:
                self.close(sock)
        self.report.check(len(self.poller) == 1, "only the listener is still registered",
                          len(self.poller))
        self.close(self.listener)
        self.poller.close()


def serve(report: Report, what: str, total: int, concurrency: int, echo: bool) -> None:
    loop = StressLoop(report, echo)
    try:
        seconds = loop.run(total, concurrency, time.monotonic() + DEADLINE)
        counters = loop.counters
        report.say(f"{what}: {total} clients ({concurrency} at a time) in {seconds:.2f} s "
                   f"({total / seconds:.0f}/s); accepted {counters.accepted}, "
                   f"server closed {counters.server_closed}")
        report.check(counters.errors == [], f"{what}: no client saw an error",
                     counters.errors[:5])
        report.check(counters.clients_done == total, f"{what}: every client finished",
                     counters.clients_done)
        report.check(counters.accepted == total, f"{what}: the server accepted every client",
                     counters.accepted)
        report.check(counters.server_closed == total,
                     f"{what}: the server saw every client's end", counters.server_closed)
        if echo:
            report.check(counters.echo_mismatches == 0,
                         f"{what}: every echo equals its message", counters.echo_mismatches)
    finally:
        loop.shut_down()


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m poc.stage3_stress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS,
                        help="concurrent echo clients (default %(default)s)")
    parser.add_argument("--cycles", type=int, default=None,
                        help=f"connect/disconnect cycles (default {DEFAULT_CYCLES}; "
                             f"{LONG_CYCLES} with --long)")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help="cycles in flight at once (default %(default)s)")
    parser.add_argument("--long", action="store_true",
                        help=f"the long mode: {LONG_CYCLES} connect/disconnect cycles")
    arguments = parser.parse_args(argv)
    if arguments.cycles is None:
        arguments.cycles = LONG_CYCLES if arguments.long else DEFAULT_CYCLES
    for name in ("clients", "cycles", "concurrency"):
        if getattr(arguments, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)

    def body(report: Report) -> None:
        cancel_pending_accept(report)
        serve(report, "echo", arguments.clients, arguments.clients, echo=True)
        serve(report, "cycles", arguments.cycles, arguments.concurrency, echo=False)

    return run_stage("stage3_stress", body)


if __name__ == "__main__":
    sys.exit(main())
