"""Windows facts the exec backend relies on or may rely on (run in the Wine leg)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import time

import pytest

from ntdll import functions as nt

CREATE_SUSPENDED = 0x00000004
JOB_OBJECT_MSG_ACTIVE_PROCESS_ZERO = 4
JOB_OBJECT_MSG_NEW_PROCESS = 6
JOB_OBJECT_MSG_EXIT_PROCESS = 7
JobObjectAssociateCompletionPortInformation = 7


class JOBOBJECT_ASSOCIATE_COMPLETION_PORT(ctypes.Structure):
    _fields_ = [("CompletionKey", ctypes.c_void_p), ("CompletionPort", ctypes.c_void_p)]


@pytest.mark.windows
def test_a_job_reports_its_processes_on_a_port() -> None:
    """E12: a job associated with a port posts NEW_PROCESS and EXIT_PROCESS for the child and
    the grandchild, then ACTIVE_PROCESS_ZERO: key = the job's key, Information = the message,
    ApcContext = the pid. (Not used by the backend yet: see ACTIVE_KB.md.)"""
    from iocp import CompletionPort, Handle

    with CompletionPort() as port, Handle(nt.CreateJobObjectW(), "job") as job:
        port.add_raw_key(77)  # ApcContext is a pid, never an operation
        nt.SetInformationJobObject(job.value, JobObjectAssociateCompletionPortInformation,
                                   JOBOBJECT_ASSOCIATE_COMPLETION_PORT(77, port.handle))
        code = "import subprocess, sys; subprocess.run([sys.executable, '-S', '-c', 'pass'])"
        child = subprocess.Popen([sys.executable, "-S", "-c", code],
                                 creationflags=CREATE_SUSPENDED)
        process = nt.OpenProcess(nt.PROCESS_SET_QUOTA | nt.PROCESS_TERMINATE
                                 | nt.PROCESS_SUSPEND_RESUME, child.pid)
        try:
            nt.AssignProcessToJobObject(job.value, process)
            nt.NtResumeProcess(process)
        finally:
            nt.CloseHandle(process)
        messages: list[tuple[int, int]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
                JOB_OBJECT_MSG_ACTIVE_PROCESS_ZERO, 0) not in messages:
            for completion in port.dequeue(timeout=1.0):
                assert completion.key == 77
                messages.append((completion.information, completion.apc_context))
        assert child.wait(60) == 0
    pids = {pid for message, pid in messages if message == JOB_OBJECT_MSG_NEW_PROCESS}
    assert child.pid in pids and len(pids) == 2  # the child and its grandchild
    exited = {pid for message, pid in messages if message == JOB_OBJECT_MSG_EXIT_PROCESS}
    assert exited == pids
    assert messages[-1] == (JOB_OBJECT_MSG_ACTIVE_PROCESS_ZERO, 0)


@pytest.mark.windows
def test_createprocess_internal_error_is_tried_once_more(monkeypatch: pytest.MonkeyPatch) -> None:
    """WE3: the exec backend's spawn (``IocpLoop.spawn`` → ``WindowsChild`` → ``iocp.spawn``)
    tries ``CreateProcess`` once more after ERROR_INTERNAL_ERROR (1359); a second 1359 is raised
    (``tests/test_spawn.py`` checks the retry's rules)."""
    from execsession.backends import open_loop
    from execsession.config import StderrMode

    real = subprocess.Popen
    failures = [1]
    calls = [0]

    def flaky(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if failures[0]:
            failures[0] -= 1
            raise OSError(None, "CreateProcess: Internal error", None, 1359)
        return real(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "Popen", flaky)
    loop = open_loop("iocp")
    try:
        child = loop.spawn(["cmd.exe", "/c", "exit 3"], shell=False, stderr=StderrMode.MERGE,
                           pipe_sizes=(65536, 65536, 65536))
        try:
            assert child._process is not None  # type: ignore[attr-defined]
            assert child._process.wait(30) == 3  # type: ignore[attr-defined]
        finally:
            child.close()
        assert calls == [2]
        failures[0] = 2
        with pytest.raises(OSError) as raised:
            loop.spawn(["cmd.exe", "/c", "exit 3"], shell=False, stderr=StderrMode.MERGE,
                       pipe_sizes=(65536, 65536, 65536))
        assert getattr(raised.value, "winerror", None) == 1359
    finally:
        loop.close()
