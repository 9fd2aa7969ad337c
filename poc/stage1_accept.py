"""Stage 1 (event form): IOCTL_AFD_POLL for AFD_POLL_ACCEPT, signalled through an event.

A listening socket's base handle is polled with ``Event`` set and ``ApcContext = NULL``; a
client connects from another thread; the event fires and the poll reports ``0x80``.
"""

from __future__ import annotations

import socket
import threading

from afd import AfdPollEvents, base_socket_handle, poll_with_event

from .report import Report, run_stage

CONNECT_DELAY = 0.2
WAIT_LIMIT = 10.0


def body(report: Report) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        base = base_socket_handle(listener)
        report.say(f"listening on {listener.getsockname()}, socket 0x{listener.fileno():x}, "
                   f"base handle 0x{base:x}")
        clients: list[socket.socket] = []

        def connect() -> None:
            clients.append(socket.create_connection(listener.getsockname(), timeout=WAIT_LIMIT))

        timer = threading.Timer(CONNECT_DELAY, connect)
        timer.start()
        try:
            fired = poll_with_event(base, [(base, AfdPollEvents.ACCEPT)], WAIT_LIMIT)
        finally:
            timer.join()
            for client in clients:
                client.close()
        report.require(len(fired) == 1, "the poll completed with one handle", fired)
        events = int(fired[0].events)
        print(f"Events returned: 0x{events:x}", flush=True)
        report.check(fired[0].handle == base, "it names the listening socket's base handle",
                     hex(fired[0].handle))
        report.check(events == AfdPollEvents.ACCEPT, "the event is AFD_POLL_ACCEPT (0x80)",
                     hex(events))
        conn, peer = listener.accept()
        conn.close()
        report.check(True, f"accept() then returned the connection from {peer}")


def main() -> int:
    return run_stage("stage1_accept", body)


if __name__ == "__main__":
    raise SystemExit(main())
