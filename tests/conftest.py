"""Shared fixtures. Tests marked ``windows`` need the real NT calls: they run in the Wine (or
Windows) leg and are skipped, with that reason, on other platforms."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator

import pytest

ON_WINDOWS = sys.platform == "win32"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ON_WINDOWS:
        skip = pytest.mark.skip(reason="checks behaviour off Windows; runs in the Linux leg")
        marker = "posix"
    else:
        skip = pytest.mark.skip(reason=f"needs the NT/AFD calls of Windows (or Wine); "
                                       f"this is {sys.platform}: runs in the Wine leg")
        marker = "windows"
    for item in items:
        if marker in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In the Windows leg (NTAFD_WINDOWS_LEG=1) only ``posix`` tests may skip: any other skip
    would hide a Windows test that did not run, so it is turned into a failure."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if (ON_WINDOWS and os.environ.get("NTAFD_WINDOWS_LEG") == "1" and report.skipped
            and "posix" not in item.keywords and not hasattr(report, "wasxfail")):
        report.outcome = "failed"
        report.longrepr = (f"skipped in the Windows leg, where every test must run: "
                           f"{report.longrepr}")


@pytest.fixture
def port() -> Iterator[object]:
    from iocp import CompletionPort

    with CompletionPort() as completion_port:
        yield completion_port


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    with sock:
        yield sock


@pytest.fixture
def connected_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP pair on loopback (``socket.socketpair`` on Windows is TCP too)."""
    first, second = socket.socketpair()
    first.setblocking(False)
    second.setblocking(False)
    with first, second:
        yield first, second
