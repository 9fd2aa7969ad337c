"""The IOCP backend's child process: stdio on overlapped pipes, the tree in a job object.

* Child stdio: overlapped named pipes (``iocp.child_stdio_pipe``); our ends are associated with the
  loop's port and read/written through :mod:`execsession.iocp_streams` (``iocp.PipeIO``, with
  skip-on-success); the child's ends are synchronous (a child expects ordinary handles) and
  handed over by ``subprocess``, which duplicates them as inheritable for ``CreateProcess`` only.
* The process tree: the child is created suspended, put in a job object with
  ``KILL_ON_JOB_CLOSE``, then resumed, so every process it starts is in the job before it can
  start any; ``TerminateJobObject`` kills the tree, and closing the job kills what is left.
* The child's exit is polled (``Popen.poll``: ``WaitForSingleObject`` with no wait): every
  ``POLL_IDLE_MAX`` seconds at most while its output is open (a process it started may hold
  the output after the child exited: the session must still see the exit, see
  ``drain_timeout``), and quickly (``POLL_MIN`` backing off to ``POLL_MAX``) once its output
  ended or it was killed. Under Wine each poll is a wineserver round trip, so idle sessions
  poll seldom (a job's exit messages on the port would make it free: ACTIVE_KB E12).
"""

from __future__ import annotations

import sys

if sys.platform != "win32":  # pragma: no cover - backends.open_loop() refuses first
    raise ImportError("execsession.iocp_child needs Windows (or Wine)")

import os
import subprocess
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from iocp import Handle, child_stdio_pipe
from iocp.spawn import popen
from ntdll import functions as nt
from ntdll.structures import JOBOBJECT_EXTENDED_LIMIT_INFORMATION

from .config import StderrMode
from .iocp_streams import OverlappedStream, pipe_stream
from .loop import Child, Timer

if TYPE_CHECKING:
    from .iocp_backend import IocpLoop

__all__ = ["WindowsChild"]

POLL_MIN = 0.002
POLL_MAX = 0.1
POLL_IDLE_MAX = 1.0
"""Slowest exit poll while the child's output is still open."""
CREATE_SUSPENDED = 0x00000004
CREATE_NEW_PROCESS_GROUP = 0x00000200  # Ctrl-C in the server's console does not reach it


PROCESS_ACCESS = nt.PROCESS_SET_QUOTA | nt.PROCESS_TERMINATE | nt.PROCESS_SUSPEND_RESUME


def _kill_on_close_job() -> Handle:
    job = Handle(nt.CreateJobObjectW(), "job object")
    try:
        limits = JOBOBJECT_EXTENDED_LIMIT_INFORMATION()
        limits.BasicLimitInformation.LimitFlags = nt.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        nt.SetInformationJobObject(job.value, nt.JobObjectExtendedLimitInformation, limits)
    except BaseException:
        job.close()
        raise
    return job


class WindowsChild(Child):
    """A child on overlapped pipes, its tree in a ``KILL_ON_JOB_CLOSE`` job."""

    def __init__(self, loop: IocpLoop, command: Sequence[str] | str, *, shell: bool,
                 stderr: StderrMode, pipe_sizes: tuple[int, int, int], cwd: str | None,
                 env: dict[str, str] | None) -> None:
        self._loop = loop
        # Every attribute kill() and close() use is set before anything can fail, so a failure
        # below is raised as itself, never masked by an AttributeError from the clean-up.
        self._process: subprocess.Popen[bytes] | None = None
        self._returncode: int | None = None
        self._on_exit: Callable[[int], None] | None = None
        self._delay = POLL_MIN
        self._timer: Timer | None = None
        self._expected = False
        ours: list[Handle] = []
        theirs: list[int] = []  # fds of the child's ends
        job: Handle | None = None
        try:
            for index, child_reads in ((0, True), (1, False)):
                our_end, fd = child_stdio_pipe(child_reads=child_reads,
                                               buffer_size=pipe_sizes[index])
                ours.append(our_end)
                theirs.append(fd)
            stderr_r: Handle | None = None
            child_stderr: int
            if stderr is StderrMode.SEPARATE:
                stderr_r, child_stderr = child_stdio_pipe(child_reads=False,
                                                          buffer_size=pipe_sizes[2])
                ours.append(stderr_r)
                theirs.append(child_stderr)
            elif stderr is StderrMode.MERGE:
                child_stderr = subprocess.STDOUT
            else:
                child_stderr = subprocess.DEVNULL
            job = _kill_on_close_job()
            # Suspended until it is in the job: nothing it starts can escape the job.
            process = popen(
                command, shell=shell, stdin=theirs[0], stdout=theirs[1], stderr=child_stderr,
                creationflags=CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP, close_fds=True,
                cwd=cwd, env=env)
            try:
                handle = nt.OpenProcess(PROCESS_ACCESS, process.pid)
                try:
                    nt.AssignProcessToJobObject(job.value, handle)
                    nt.NtResumeProcess(handle)
                finally:
                    nt.CloseHandle(handle)
            except BaseException:
                process.kill()
                process.wait()
                raise
        except BaseException:
            for owned in ours:
                owned.close()
            if job is not None:
                job.close()
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        self._process = process
        self._job: Handle = job
        self.pid = process.pid
        streams: list[OverlappedStream] = []
        try:
            for owned in ours:
                streams.append(pipe_stream(loop, owned))
        except BaseException:
            for stream in streams:
                stream.close()
            for owned in ours[len(streams):]:
                owned.close()
            self._job.close()  # KILL_ON_JOB_CLOSE: the child dies with it
            try:
                process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            raise
        self.stdin = streams[0]
        self.stdout = streams[1]
        self.stderr = streams[2] if stderr_r is not None else None

    def watch_exit(self, callback: Callable[[int], None]) -> None:
        self._on_exit = callback
        if self._returncode is None and self._timer is None:
            self._schedule(POLL_MAX)  # idle polling, backing off to POLL_IDLE_MAX

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._delay = delay
        self._timer = self._loop.call_later(delay, self._poll)

    def expect_exit(self) -> None:
        self._expected = True
        if self._returncode is None and self._on_exit is not None:
            self._schedule(POLL_MIN)

    def _poll(self) -> None:
        self._timer = None
        process = self._process
        if self._returncode is not None or process is None:
            return
        returncode = process.poll()
        if returncode is None:
            self._schedule(min(POLL_MAX if self._expected else POLL_IDLE_MAX, self._delay * 2))
            return
        self._returncode = returncode
        if self._on_exit is not None:
            self._on_exit(returncode)

    def kill(self) -> None:
        if self._job.closed:
            return
        try:
            nt.TerminateJobObject(self._job.value, 1)
        except OSError:
            pass  # the job is empty already
        self.expect_exit()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        self._job.close()  # KILL_ON_JOB_CLOSE: whatever is left of the tree dies
        if self._process is not None and self._returncode is None:
            try:
                self._returncode = self._process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        self._process = None  # releases the process handle
