"""Stage 2: an echo server driven by AFD polls on a completion port.

Each socket has a context (its base handle, pending output, its one outstanding poll). The
listener is armed for AFD_POLL_ACCEPT; each connection for RECEIVE (while it may still read)
and SEND (while output waits), plus DISCONNECT and ABORT; every completion is handled with
non-blocking socket calls and the socket re-armed. Two clients run in threads: a short message,
and 1 MiB streamed both ways at once, checked by SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from afd import AfdHelperHandle, AfdPollEvents, AfdPollOperation, base_socket_handle
from iocp import CompletionPort

from .clients import accept_waiting, listening_socket
from .report import Report, run_stage

E = AfdPollEvents
HELPER_KEY = 1
DEADLINE = 60.0
STREAM_BYTES = 1024 * 1024
MAX_PENDING_OUTPUT = 256 * 1024  # stop reading from a client whose echo is not being read
CHUNK = 64 * 1024


@dataclass(eq=False)
class SocketContext:
    sock: socket.socket
    base: int
    listening: bool = False
    output: bytearray = field(default_factory=bytearray)
    read_closed: bool = False
    poll: AfdPollOperation | None = None
    bytes_echoed: int = 0

    def wanted_events(self) -> AfdPollEvents:
        if self.listening:
            return E.ACCEPT
        events = E.ABORT | E.DISCONNECT
        if not self.read_closed and len(self.output) < MAX_PENDING_OUTPUT:
            events |= E.RECEIVE
        if self.output:
            events |= E.SEND
        return events


class EchoServer:
    """A single-threaded echo server: one port, one AFD helper, one poll per socket."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.port = CompletionPort()
        self.helper = AfdHelperHandle(self.port, HELPER_KEY)
        self.listener = listening_socket()
        self.contexts: set[SocketContext] = set()
        self.finished_connections = 0
        self.polls_completed = 0
        self.arm(SocketContext(self.listener, base_socket_handle(self.listener), listening=True))

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return host, port

    def arm(self, context: SocketContext) -> None:
        self.contexts.add(context)
        context.poll = self.helper.poll([(context.base, context.wanted_events())], tag=context)

    def drop(self, context: SocketContext) -> None:
        self.contexts.discard(context)
        context.sock.close()
        self.finished_connections += 1

    def run_until(self, finished: Callable[[], bool], deadline: float) -> None:
        """Serve until ``finished()`` or the deadline (``time.monotonic()``)."""
        while not finished() and time.monotonic() < deadline:
            for completion in self.port.dequeue(timeout=0.2):
                operation = completion.operation
                if not isinstance(operation, AfdPollOperation):
                    continue
                context = operation.tag
                assert isinstance(context, SocketContext)
                self.polls_completed += 1
                context.poll = None
                events = E(0)
                for entry in operation.results:
                    events |= entry.events
                self.handle(context, events)

    def handle(self, context: SocketContext, events: AfdPollEvents) -> None:
        if context.listening:
            self.accept_all()
            self.arm(context)
            return
        if events & E.LOCAL_CLOSE:
            self.contexts.discard(context)
            return
        if events & E.ABORT:
            self.drop(context)
            return
        if events & (E.RECEIVE | E.DISCONNECT):
            self.receive(context)
        if events & E.SEND or context.output:
            self.send(context)
        if context.read_closed and not context.output:
            context.sock.shutdown(socket.SHUT_WR)
            self.drop(context)
            return
        self.arm(context)

    def accept_all(self) -> None:
        for conn in accept_waiting(self.listener):
            self.arm(SocketContext(conn, base_socket_handle(conn)))

    def receive(self, context: SocketContext) -> None:
        while len(context.output) < MAX_PENDING_OUTPUT:
            try:
                data = context.sock.recv(CHUNK)
            except BlockingIOError:
                return
            if not data:
                context.read_closed = True
                return
            context.output += data

    def send(self, context: SocketContext) -> None:
        while context.output:
            try:
                sent = context.sock.send(context.output)
            except BlockingIOError:
                return
            context.bytes_echoed += sent
            del context.output[:sent]

    def close(self) -> None:
        for context in list(self.contexts):
            context.sock.close()
        self.contexts.clear()
        self.helper.close()
        self.port.close()


def short_client(address: tuple[str, int], results: dict[str, object]) -> None:
    with socket.create_connection(address, timeout=DEADLINE) as sock:
        sock.sendall(b"hello, AFD")
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(4096):
            received += chunk
        results["short"] = bytes(received)


def stream_client(address: tuple[str, int], payload: bytes, results: dict[str, object]) -> None:
    with socket.create_connection(address, timeout=DEADLINE) as sock:
        def sender() -> None:
            view = memoryview(payload)
            for start in range(0, len(view), CHUNK):
                sock.sendall(view[start:start + CHUNK])
            sock.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        digest = hashlib.sha256()
        total = 0
        while chunk := sock.recv(CHUNK):
            digest.update(chunk)
            total += len(chunk)
        thread.join(DEADLINE)
        results["stream_bytes"] = total
        results["stream_sha256"] = digest.hexdigest()


def body(report: Report) -> None:
    server = EchoServer(report)
    try:
        report.say(f"echo server on {server.address}")
        deadline = time.monotonic() + DEADLINE
        results: dict[str, object] = {}
        done = threading.Event()
        payload = os.urandom(STREAM_BYTES)

        def clients() -> None:
            try:
                short_client(server.address, results)
                stream_client(server.address, payload, results)
            except Exception as error:
                results["error"] = repr(error)
            finally:
                done.set()

        started = time.perf_counter()
        thread = threading.Thread(target=clients, daemon=True)
        thread.start()
        # Serve until the clients are done and the server has closed both connections.
        server.run_until(lambda: done.is_set() and server.finished_connections >= 2, deadline)
        elapsed = time.perf_counter() - started
        thread.join(1)
        report.check("error" not in results, "the clients ran without error",
                     results.get("error"))
        report.check(results.get("short") == b"hello, AFD", "the short message came back",
                     results.get("short"))
        expected = hashlib.sha256(payload).hexdigest()
        report.say(f"streamed {results.get('stream_bytes')} bytes back in {elapsed:.2f} s, "
                   f"sha256 {results.get('stream_sha256')}")
        report.check(results.get("stream_bytes") == STREAM_BYTES, "1 MiB came back",
                     results.get("stream_bytes"))
        report.check(results.get("stream_sha256") == expected, "with the same SHA-256")
        report.check(server.finished_connections == 2, "both connections were closed",
                     server.finished_connections)
        report.say(f"{server.polls_completed} AFD poll completions handled")
    finally:
        server.close()


def main() -> int:
    return run_stage("stage2_echo", body)


if __name__ == "__main__":
    raise SystemExit(main())
