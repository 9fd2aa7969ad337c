"""Stage 1 (completion-port form): IOCTL_AFD_POLL completing on an I/O completion port.

An AFD helper handle (``\\Device\\Afd\\...`` opened with NtCreateFile) is associated with a port;
a poll for AFD_POLL_ACCEPT on a listening socket's base handle is issued on it with
``Event = NULL`` and ``ApcContext = &iosb``; a client connects; NtRemoveIoCompletionEx (10 s
timeout) returns the completion, whose ApcContext must be the one passed.
"""

from __future__ import annotations

from afd import AfdHelperHandle, AfdPollEvents, base_socket_handle
from iocp import CompletionPort
from ntdll import status as ntstatus

from .clients import connect_later, listening_socket
from .report import Report, run_stage

HELPER_KEY = 1
CONNECT_DELAY = 0.2
WAIT_LIMIT = 10.0


def body(report: Report) -> None:
    with CompletionPort() as port, AfdHelperHandle(port, HELPER_KEY) as helper, \
            listening_socket() as listener:
        base = base_socket_handle(listener)
        report.say(f"port 0x{port.handle:x}, AFD helper 0x{helper.handle:x}, listening on "
                   f"{listener.getsockname()} (base handle 0x{base:x})")
        poll = helper.poll([(base, AfdPollEvents.ACCEPT)], tag="accept")
        report.say(f"IOCTL_AFD_POLL issued: ApcContext = &iosb = 0x{poll.apc_context:x}")
        report.check(poll.pending, "the poll is pending (STATUS_PENDING)")
        with connect_later(listener.getsockname(), CONNECT_DELAY, WAIT_LIMIT):
            batch = port.dequeue(timeout=WAIT_LIMIT)
        report.require(len(batch) == 1, "NtRemoveIoCompletionEx returned one completion",
                       batch)
        completion = batch[0]
        report.say(f"completion: key {completion.key}, ApcContext 0x{completion.apc_context:x},"
                   f" status 0x{completion.status:08x}, information {completion.information}")
        report.check(completion.apc_context == poll.apc_context,
                     "the returned ApcContext is the one passed")
        report.check(completion.operation is poll, "it maps back to the poll operation")
        report.check(completion.key == HELPER_KEY, "the key is the helper's", completion.key)
        report.check(completion.status == ntstatus.STATUS_SUCCESS, "status STATUS_SUCCESS",
                     hex(completion.status))
        fired = poll.results
        report.require(len(fired) == 1, "one handle reported", fired)
        events = int(fired[0].events)
        print(f"Events returned: 0x{events:x}", flush=True)
        report.check(fired[0].handle == base, "it is the listening socket's base handle")
        report.check(events == AfdPollEvents.ACCEPT, "the event is AFD_POLL_ACCEPT (0x80)",
                     hex(events))


def main() -> int:
    return run_stage("stage1_iocp", body)


if __name__ == "__main__":
    raise SystemExit(main())
