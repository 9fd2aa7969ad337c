"""The stages' shared reporting: checks, printed observations, a final PASS/FAIL line."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable


class StageFailed(Exception):
    """A check failed; the message says which and what was seen."""


class Report:
    """Prints what a stage saw, counts its checks, and turns them into an exit status."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.started = time.perf_counter()
        self.failures = 0
        self.checks = 0

    def say(self, message: str) -> None:
        print(f"[{self.stage}] {message}", flush=True)

    def check(self, condition: bool, what: str, seen: object = None) -> None:
        """Record one check; a failed one is printed with what was seen."""
        self.checks += 1
        suffix = "" if seen is None else f" (saw {seen!r})"
        if condition:
            self.say(f"ok: {what}{suffix}")
        else:
            self.failures += 1
            self.say(f"FAILED: {what}{suffix}")

    def require(self, condition: bool, what: str, seen: object = None) -> None:
        """A check the rest of the stage depends on: stop the stage if it fails."""
        self.check(condition, what, seen)
        if not condition:
            raise StageFailed(what)

    def finish(self) -> int:
        elapsed = time.perf_counter() - self.started
        verdict = "PASS" if self.failures == 0 and self.checks > 0 else "FAIL"
        print(f"{verdict}: {self.stage}: {self.checks - self.failures}/{self.checks} checks "
              f"in {elapsed:.2f} s", flush=True)
        return 0 if verdict == "PASS" else 1


def run_stage(stage: str, body: Callable[[Report], None]) -> int:
    """Run ``body`` with a :class:`Report`; any exception is a failure, printed in full."""
    report = Report(stage)
    if sys.platform != "win32":
        report.say(f"this stage needs Windows (or Wine); this platform is {sys.platform!r}")
        report.failures += 1
        return report.finish()
    try:
        body(report)
    except StageFailed:
        pass
    except Exception:
        report.failures += 1
        report.say("error:\n" + traceback.format_exc())
    return report.finish()
