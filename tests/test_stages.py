"""Every stage, run as a user runs it: ``python -m poc.<stage>``."""

from __future__ import annotations

import subprocess
import sys

import pytest

STAGES = ["stage0_wake", "stage1_accept", "stage1_iocp", "stage2_echo", "stage3_stress"]


def run_stage(stage: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"poc.{stage}"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.windows
@pytest.mark.parametrize("stage", STAGES)
def test_stage_passes(stage: str) -> None:
    result = run_stage(stage)
    assert result.returncode == 0, result.stdout + result.stderr
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line.startswith(f"PASS: {stage}:"), result.stdout
    assert "FAILED" not in result.stdout
    if stage.startswith("stage1"):
        assert "Events returned: 0x80" in result.stdout.splitlines()


@pytest.mark.posix
def test_stage_off_windows_fails_clearly() -> None:
    result = run_stage("stage1_iocp")
    assert result.returncode == 1
    assert "needs Windows (or Wine)" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("FAIL: stage1_iocp")
