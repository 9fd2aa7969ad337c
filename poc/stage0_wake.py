"""Stage 0: a thread posts a packet with a reserved key and the dequeuing loop wakes on it.

Shows NtCreateIoCompletion, NtSetIoCompletion and NtRemoveIoCompletionEx: an empty port times
out with STATUS_TIMEOUT (an empty batch), and a packet posted from another thread wakes a
blocked dequeue with the key, status and information it was posted with.
"""

from __future__ import annotations

import threading
import time

from iocp import WAKEUP_KEY, CompletionPort

from .report import Report, run_stage

POST_DELAY = 0.2
WAIT_LIMIT = 10.0


def body(report: Report) -> None:
    with CompletionPort() as port:
        report.say(f"created {port!r}")
        started = time.perf_counter()
        empty = port.dequeue(timeout=0.1)
        waited = time.perf_counter() - started
        report.check(empty == [], "a dequeue on an empty port times out with an empty batch",
                     empty)
        report.check(waited >= 0.09, "the timeout was honoured", f"{waited:.3f} s")

        timer = threading.Timer(POST_DELAY, port.wakeup)
        timer.start()
        started = time.perf_counter()
        batch = port.dequeue(timeout=WAIT_LIMIT)
        waited = time.perf_counter() - started
        timer.join()
        report.say(f"dequeue returned after {waited:.3f} s: {batch}")
        report.require(len(batch) == 1, "exactly one packet woke the loop", len(batch))
        report.check(batch[0].key == WAKEUP_KEY, "it carries the reserved wake-up key",
                     hex(batch[0].key))
        report.check(batch[0].status == 0 and batch[0].operation is None,
                     "status STATUS_SUCCESS, no operation")
        report.check(POST_DELAY * 0.5 <= waited < WAIT_LIMIT,
                     "the loop slept until the post, then woke", f"{waited:.3f} s")


def main() -> int:
    return run_stage("stage0_wake", body)


if __name__ == "__main__":
    raise SystemExit(main())
