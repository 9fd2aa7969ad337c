"""Shared fixtures. Tests marked ``windows`` need the real NT calls: they run in the Wine (or
Windows) legs and are skipped, with that reason, on other platforms. Tests marked ``cffi`` need
the C speedups, ``cffi_debug`` their Debug build: they run in the legs that load them.

``NTAFD_EXPECT_IMPLEMENTATION`` (``ctypes``, ``cffi-debug``, ``cffi-optimized``) names what a leg
must load: a leg that got another implementation stops before running any test."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator

import pytest

from ntdll import speedups

ON_WINDOWS = sys.platform == "win32"
EXPECT_ENV = "NTAFD_EXPECT_IMPLEMENTATION"


def pytest_report_header(config: pytest.Config) -> str:
    detail = f" ({speedups.LOAD_ERROR})" if speedups.LOAD_ERROR else ""
    return f"ntafd implementation: {speedups.IMPLEMENTATION}{detail}"


def pytest_sessionstart(session: pytest.Session) -> None:
    expected = os.environ.get(EXPECT_ENV)
    if expected is not None and expected != speedups.IMPLEMENTATION:
        pytest.exit(f"{EXPECT_ENV}={expected} but this process loaded "
                    f"{speedups.IMPLEMENTATION} ({speedups.LOAD_ERROR})", returncode=3)


def _not_in_this_leg(item: pytest.Item) -> bool:
    """Whether ``item`` may skip here: it is for another platform or implementation."""
    if "posix" in item.keywords and ON_WINDOWS:
        return True
    if "cffi" in item.keywords and speedups.native is None:
        return True
    return "cffi_debug" in item.keywords and not (speedups.native and speedups.native.debug)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ON_WINDOWS:
        platform_skip = pytest.mark.skip(
            reason="checks behaviour off Windows; runs in the Linux leg")
        marker = "posix"
    else:
        platform_skip = pytest.mark.skip(reason=f"needs the NT/AFD calls of Windows (or Wine); "
                                                f"this is {sys.platform}: runs in the Wine leg")
        marker = "windows"
    cffi_skip = pytest.mark.skip(reason=f"needs the C speedups; this leg uses "
                                        f"{speedups.IMPLEMENTATION}: runs in the wine-cffi legs")
    debug_skip = pytest.mark.skip(reason=f"needs the Debug build of the speedups; this leg uses "
                                         f"{speedups.IMPLEMENTATION}: runs in wine-cffi-debug")
    for item in items:
        if marker in item.keywords or (not ON_WINDOWS and (
                "cffi" in item.keywords or "cffi_debug" in item.keywords)):
            item.add_marker(platform_skip)
        elif "cffi" in item.keywords and speedups.native is None:
            item.add_marker(cffi_skip)
        elif "cffi_debug" in item.keywords and not (speedups.native and speedups.native.debug):
            item.add_marker(debug_skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In the Windows legs (NTAFD_WINDOWS_LEG=1) only ``posix`` tests, and tests for another
    implementation of the speedups, may skip: any other skip would hide a Windows test that did
    not run, so it is turned into a failure."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if (ON_WINDOWS and os.environ.get("NTAFD_WINDOWS_LEG") == "1" and report.skipped
            and not _not_in_this_leg(item) and not hasattr(report, "wasxfail")):
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
