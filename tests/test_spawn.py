"""WE3: Wine's CreateProcess rarely fails with ERROR_INTERNAL_ERROR (1359) under load; both
spawners (``afd.aio_subprocess`` for the asyncio loop, ``execsession.iocp_child`` for the exec
backend) call ``iocp.spawn.popen``, which tries once more; a second 1359 is raised with a message
saying so, any other error at once. The failures are injected (``subprocess.Popen`` replaced)."""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.windows

Runner: Any = getattr(asyncio, "Runner", None)  # Python 3.11+ (the Wine legs run 3.11)

ERROR_INTERNAL_ERROR = 1359


class FlakyPopen:
    """``subprocess.Popen`` that fails ``failures`` times with the given winerror first."""

    def __init__(self, winerror: int = ERROR_INTERNAL_ERROR) -> None:
        self.real = subprocess.Popen
        self.winerror = winerror
        self.failures = 0
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise OSError(None, "CreateProcess: injected failure", None, self.winerror)
        return self.real(*args, **kwargs)


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyPopen]:
    fake = FlakyPopen()
    monkeypatch.setattr(subprocess, "Popen", fake)  # as iocp.spawn calls it
    yield fake


def test_popen_tries_once_more_after_an_internal_error(
        flaky: FlakyPopen, caplog: pytest.LogCaptureFixture) -> None:
    from iocp.spawn import popen

    flaky.failures = 1
    with caplog.at_level(logging.WARNING, logger="iocp.spawn"):
        process = popen(["cmd.exe", "/c", "exit 3"], stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL)
    assert process.wait(30) == 3
    assert flaky.calls == 2
    assert "trying once more" in caplog.text

    flaky.calls, flaky.failures = 0, 2
    with pytest.raises(OSError) as raised:
        popen(["cmd.exe", "/c", "exit 3"])
    assert flaky.calls == 2
    assert raised.value.winerror == ERROR_INTERNAL_ERROR  # type: ignore[attr-defined,unused-ignore]
    assert "failed twice in a row with ERROR_INTERNAL_ERROR" in str(raised.value)
    assert "cmd.exe" in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)  # the second failure itself


def test_popen_does_not_retry_other_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from iocp.spawn import popen

    fake = FlakyPopen(winerror=2)  # ERROR_FILE_NOT_FOUND: a real failure, never retried
    monkeypatch.setattr(subprocess, "Popen", fake)
    fake.failures = 1
    with pytest.raises(OSError) as raised:
        popen(["cmd.exe", "/c", "exit 3"])
    assert fake.calls == 1
    assert raised.value.winerror == 2  # type: ignore[attr-defined,unused-ignore]


def test_the_asyncio_loop_spawn_tries_once_more(flaky: FlakyPopen) -> None:
    """Through ``create_subprocess_exec`` on AfdEventLoop: one injected 1359 and the child runs
    with its pipes; two and the clear error comes out of ``create_subprocess_exec`` with the
    pipes made for the child closed (handle count flat)."""
    from afd import asyncio_loop

    from .support import process_handle_count

    async def child_output() -> bytes:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read()[::-1])",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        output, _ = await process.communicate(b"spawned once more")
        assert process.returncode == 0
        return output

    async def main() -> None:
        flaky.failures = 1
        assert await child_output() == b"erom ecno denwaps"
        assert flaky.calls == 2
        gc.collect()
        before = process_handle_count()
        for _ in range(10):
            flaky.failures = 2
            with pytest.raises(OSError, match="failed twice in a row"):
                await child_output()
        gc.collect()
        assert process_handle_count() - before <= 2

    with Runner(loop_factory=asyncio_loop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 120))
