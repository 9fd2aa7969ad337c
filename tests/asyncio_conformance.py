"""Runs CPython's own asyncio tests against ``AfdEventLoop`` and prints the outcome of each.

    python -m tests.asyncio_conformance SUITE [CPYTHON_TESTS_DIR]

SUITE is one of :data:`SUITES`. The tests are CPython 3.11's ``Lib/test/test_asyncio`` from
Debian's source package (``tools/install-cpython-tests.sh`` puts them in
``.cache/cpython-tests``); each suite is the stdlib's own test class or mixin with the loop
replaced by ours, exactly as the stdlib tests its Selector and Proactor loops on Windows.
Prints one JSON object: ``{test_id: [outcome, detail]}`` (outcome ``passed``, ``failed``,
``error``, ``skipped``, ``expected-failure``, ``unexpected-success``) on the last line.
``tests/test_asyncio_conformance.py`` compares it with the known exceptions.
"""

# mypy: disable-error-code="misc"
# (the stdlib test classes are untyped: subclassing them is subclassing Any)
from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
import unittest
from collections.abc import Callable
from typing import Any

SUITES = ("events", "streams", "sock", "subprocess")
DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           ".cache", "cpython-tests")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """Ours; ``NTAFD_CONFORMANCE_LOOP=proactor`` runs the same suites on the stdlib's
    Proactor loop, to tell this loop's failures from those every Windows loop has."""
    if os.environ.get("NTAFD_CONFORMANCE_LOOP") == "proactor":
        return asyncio.ProactorEventLoop  # type: ignore[attr-defined,no-any-return,unused-ignore]
    from afd.asyncio_loop import new_event_loop
    return new_event_loop


def _suite(name: str) -> unittest.TestSuite:
    new_loop = _loop_factory()
    loader = unittest.TestLoader()
    if name == "events":
        from test.test_asyncio import test_events, utils

        class AfdEventLoopTests(test_events.EventLoopTestsMixin,
                                test_events.SubprocessTestsMixin, utils.TestCase):
            def create_event_loop(self) -> asyncio.AbstractEventLoop:
                return new_loop()

        return loader.loadTestsFromTestCase(AfdEventLoopTests)
    if name == "sock":
        from test.test_asyncio import test_sock_lowlevel, utils

        class AfdSockTests(test_sock_lowlevel.BaseSockTestsMixin,
                           utils.TestCase):
            def create_event_loop(self) -> asyncio.AbstractEventLoop:
                return new_loop()

        return loader.loadTestsFromTestCase(AfdSockTests)
    if name == "streams":
        from test.test_asyncio import test_streams
        # StreamTests makes its loops with asyncio.new_event_loop(): the policy's.
        return loader.loadTestsFromTestCase(test_streams.StreamTests)
    if name == "subprocess":
        from test.test_asyncio import test_subprocess, utils

        class AfdSubprocessTests(test_subprocess.SubprocessMixin,
                                 utils.TestCase):
            def setUp(self) -> None:
                super().setUp()
                self.loop = new_loop()
                self.set_event_loop(self.loop)

        return loader.loadTestsFromTestCase(AfdSubprocessTests)
    raise SystemExit(f"unknown suite {name!r}: one of {', '.join(SUITES)}")


def _format(err: Any) -> str:
    return "".join(traceback.format_exception(*err))


class _Outcomes(unittest.TestResult):
    def __init__(self) -> None:
        super().__init__()
        self.outcomes: dict[str, list[str]] = {}

    @staticmethod
    def _id(test: unittest.TestCase) -> str:
        return test.id().rsplit(".", 1)[-1]

    def _set(self, test: unittest.TestCase, outcome: str, detail: str = "") -> None:
        self.outcomes[self._id(test)] = [outcome, detail[-2000:]]
        print(f"{self._id(test)}: {outcome}", file=sys.stderr, flush=True)

    def addSuccess(self, test: unittest.TestCase) -> None:
        self._set(test, "passed")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        self._set(test, "failed", _format(err))

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        self._set(test, "error", _format(err))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        self._set(test, "skipped", reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        self._set(test, "expected-failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        self._set(test, "unexpected-success")

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase,
                   err: Any) -> None:
        if err is not None:
            outcome = "failed" if issubclass(err[0], test.failureException) else "error"
            self._set(test, outcome, f"{subtest}: " + _format(err))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in SUITES:
        print(__doc__, file=sys.stderr)
        return 2
    directory = argv[1] if len(argv) > 1 else os.environ.get("NTAFD_CPYTHON_TESTS", DEFAULT_DIR)
    if not os.path.isfile(os.path.join(directory, "test", "test_asyncio", "test_events.py")):
        print(f"no CPython tests in {directory}: run tools/install-cpython-tests.sh",
              file=sys.stderr)
        return 2
    sys.path.insert(0, directory)
    if os.environ.get("NTAFD_CONFORMANCE_LOOP") == "proactor":
        asyncio.set_event_loop_policy(
            asyncio.WindowsProactorEventLoopPolicy())  # type: ignore[attr-defined,unused-ignore]
    else:
        from afd.asyncio_loop import EventLoopPolicy
        asyncio.set_event_loop_policy(EventLoopPolicy())
    result = _Outcomes()
    _suite(argv[0]).run(result)
    print(json.dumps(result.outcomes, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
