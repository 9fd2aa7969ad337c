"""CPython 3.11's own asyncio tests, run on AfdEventLoop (issue 12's conformance).

Each suite (``tests/asyncio_conformance.py``: the generic event-loop tests with the subprocess
mixin, streams, the low-level ``sock_*`` methods, subprocesses) runs in a child Windows python,
the stdlib test classes with the loop replaced by ours. Every test must pass, except those
listed here with the reason; a listed test that starts passing fails this test too, so the list
stays true. ACTIVE_KB.md (issue 12) has the same list.

The test files come from Debian's python3.11 source package (``tools/install-cpython-tests.sh``,
run by ``tools/run-tests.sh`` before the Wine legs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .asyncio_conformance import DEFAULT_DIR

pytestmark = pytest.mark.windows

NO_UNIX = "No UNIX Sockets"
NO_PIPES = "Don't support pipes for Windows"

# test name -> (outcome, why). Skips are the stdlib's own, for Windows (every Windows loop).
EXCEPTIONS: dict[str, dict[str, tuple[str, str]]] = {
    "events": {
        "test_add_signal_handler": ("skipped", "Windows: no add_signal_handler (no SIGKILL)"),
        "test_bidirectional_pty": ("skipped", "Windows: no ptys"),
        "test_create_server_reuse_port": ("skipped", "Windows: no SO_REUSEPORT"),
        "test_create_ssl_unix_connection": ("skipped", NO_UNIX),
        "test_create_unix_connection": ("skipped", NO_UNIX),
        "test_create_unix_server": ("skipped", NO_UNIX),
        "test_create_unix_server_path_socket_error": ("skipped", NO_UNIX),
        "test_create_unix_server_ssl": ("skipped", NO_UNIX),
        "test_create_unix_server_ssl_verified": ("skipped", NO_UNIX),
        "test_create_unix_server_ssl_verify_failed": ("skipped", NO_UNIX),
        "test_read_pipe": ("skipped", NO_PIPES + " (os.pipe fds; ours take handles)"),
        "test_read_pty_output": ("skipped", "Windows: no ptys"),
        "test_signal_handling_args": ("skipped", "Windows: no SIGALRM"),
        "test_signal_handling_while_selecting": ("skipped", "Windows: no SIGALRM"),
        "test_subprocess_send_signal": ("skipped", "Windows: no SIGHUP"),
        "test_unclosed_pipe_transport": ("skipped", NO_PIPES + " (os.pipe fds)"),
        "test_write_pipe": ("skipped", NO_PIPES + " (os.pipe fds)"),
        "test_write_pipe_disconnect_on_close": ("skipped", NO_PIPES + " (os.pipe fds)"),
        "test_write_pty": ("skipped", "Windows: no ptys"),
    },
    "streams": {
        "test_open_unix_connection": ("skipped", NO_UNIX),
        "test_open_unix_connection_error": ("skipped", NO_UNIX),
        "test_open_unix_connection_no_loop_ssl": ("skipped", NO_UNIX),
        "test_read_all_from_pipe_reader": ("skipped", "Windows: os.pipe fds (the stdlib skips)"),
        "test_start_unix_server": ("skipped", NO_UNIX),
    },
    "sock": {
        "test_sock_client_connect_racing": (
            "skipped", "the test skips itself on WinError 10053 (connection aborted), which "
                       "Wine's loopback gives; the Proactor and select() loops alike"),
        "test_unix_sock_client_ops": ("skipped", NO_UNIX),
    },
    "subprocess": {
        "test_devstdin_input": ("skipped", "Windows: no /dev/stdin"),
        "test_send_signal": ("skipped", "Windows: no SIGHUP"),
        "test_kill_issue43884": (
            "error", "Wine 8: os.kill(pid, CTRL_BREAK_EVENT) (GenerateConsoleCtrlEvent) fails "
                     "with WinError 12 / SystemError; the Proactor loop fails it the same way"),
        "test_popen_error": (
            "failed", "not applicable: it patches asyncio.windows_utils.Popen, the Proactor "
                      "loop's spawner, which this loop does not use (test_aio_loop.py checks "
                      "the same property on ours)"),
        "test_popen_error_with_stdin_pipe": (
            "failed", "not applicable: patches asyncio.windows_utils.Popen (as above)"),
    },
}

TIMEOUT = 420


@pytest.mark.parametrize("suite", sorted(EXCEPTIONS))
def test_cpython_asyncio_suite(suite: str) -> None:
    directory = os.environ.get("NTAFD_CPYTHON_TESTS", DEFAULT_DIR)
    assert os.path.isfile(os.path.join(directory, "test", "test_asyncio", "test_events.py")), (
        f"CPython's asyncio tests are missing from {directory}: run "
        "tools/install-cpython-tests.sh (tools/run-tests.sh does)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    completed = subprocess.run(
        [sys.executable, "-m", "tests.asyncio_conformance", suite, directory], cwd=root,
        stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
    lines = completed.stdout.decode("utf-8", "replace").strip().splitlines()
    assert completed.returncode == 0 and lines, (
        f"runner exit {completed.returncode}: "
        f"{completed.stderr.decode('utf-8', 'replace')[-3000:]}")
    outcomes: dict[str, list[str]] = json.loads(lines[-1])
    expected = EXCEPTIONS[suite]
    unexpected = {name: outcome for name, outcome in outcomes.items()
                  if outcome[0] != "passed" and expected.get(name, ("", ""))[0] != outcome[0]}
    assert not unexpected, "\n\n".join(f"{name}: {outcome[0]}\n{outcome[1]}"
                                       for name, outcome in sorted(unexpected.items()))
    now_passing = sorted(name for name in expected if outcomes.get(name, [""])[0] == "passed")
    assert not now_passing, f"listed as not passing but passed (update the list): {now_passing}"
    missing = sorted(name for name in expected if name not in outcomes)
    assert not missing, f"listed tests that did not run: {missing}"
    passed = sum(1 for outcome in outcomes.values() if outcome[0] == "passed")
    assert passed >= 10, f"only {passed} tests passed: {outcomes}"
