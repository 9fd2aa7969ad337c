"""Stage 1 (event form): IOCTL_AFD_POLL for AFD_POLL_ACCEPT, signalled through an event.

A listening socket's base handle is polled with ``Event`` set and ``ApcContext = NULL``; a
client connects from another thread; the event fires and the poll reports ``0x80``.
"""

from __future__ import annotations

from afd import AfdPollEvents, base_socket_handle, poll_with_event

from .clients import connect_later, listening_socket
from .report import Report, run_stage

CONNECT_DELAY = 0.2
WAIT_LIMIT = 10.0


def body(report: Report) -> None:
    with listening_socket() as listener:
        base = base_socket_handle(listener)
        report.say(f"listening on {listener.getsockname()}, socket 0x{listener.fileno():x}, "
                   f"base handle 0x{base:x}")
        with connect_later(listener.getsockname(), CONNECT_DELAY, WAIT_LIMIT):
            fired = poll_with_event(base, [(base, AfdPollEvents.ACCEPT)], WAIT_LIMIT)
        report.require(len(fired) == 1, "the poll completed with one handle", fired)
        events = int(fired[0].events)
        print(f"Events returned: 0x{events:x}", flush=True)
        report.check(fired[0].handle == base, "it names the listening socket's base handle",
                     hex(fired[0].handle))
        report.check(events == AfdPollEvents.ACCEPT, "the event is AFD_POLL_ACCEPT (0x80)",
                     hex(events))
        conn, peer = listener.accept()  # non-blocking: raises if nothing was really pending
        conn.close()
        report.check(peer[0] == "127.0.0.1", "accept() then returned the client's connection",
                     peer)


def main() -> int:
    return run_stage("stage1_accept", body)


if __name__ == "__main__":
    raise SystemExit(main())
