"""Child processes for ``AfdEventLoop``: overlapped pipes, and exits seen on the loop's port.

How a child is started (``_spawn``): each ``PIPE`` is an ``iocp.child_stdio_pipe`` whose child
end is synchronous (children expect ordinary handles) and whose loop end is overlapped; the
child is created suspended (``iocp.spawn.popen``: ``CreateProcess`` is tried once more on Wine's
rare ``ERROR_INTERNAL_ERROR``), assigned to the loop's job object, then resumed, so its exit
cannot happen before the job watches it.

How its exit is seen: the loop's job object is associated with the loop's completion port, so
the kernel posts ``JOB_OBJECT_MSG_EXIT_PROCESS`` (or ``ABNORMAL_EXIT_PROCESS``) with the pid to
the same port the loop waits on (ACTIVE_KB E12): no thread per child, no wait registration, no
polling. The job only watches: no limit is set, except ``SILENT_BREAKAWAY_OK``, so that the
child's own children are not in it (their messages would be noise) and the child may put them
in jobs of its own. Microsoft documents that job messages are notifications whose delivery is
not guaranteed, so each child also has a slow backstop check (:data:`BACKSTOP_SECONDS`) that
notices an exit whose message never came.

If the child cannot be put in the job (a process in a job that forbids nesting, before
Windows 8), the backstop alone notices its exit.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import subprocess
from asyncio import base_subprocess
from typing import Any

from iocp import Handle, child_stdio_pipe
from iocp.spawn import popen
from ntdll import functions as nt
from ntdll.structures import JOBOBJECT_EXTENDED_LIMIT_INFORMATION

from .aio_pipes import ChildPipe, WritePipeTransport
from .aio_port import JOB_KEY, LoopPort

__all__ = ["BACKSTOP_SECONDS", "ChildWatcher", "SubprocessTransport"]

BACKSTOP_SECONDS = 1.0
"""How often a running child's exit is checked without its job message (which Windows does not
guarantee); normally the message comes first."""

CREATE_SUSPENDED = 0x00000004
JobObjectAssociateCompletionPortInformation = 7
JobObjectExtendedLimitInformation = 9
JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK = 0x00001000
JOB_OBJECT_MSG_EXIT_PROCESS = 7
JOB_OBJECT_MSG_ABNORMAL_EXIT_PROCESS = 8
_EXIT_MESSAGES = frozenset({JOB_OBJECT_MSG_EXIT_PROCESS, JOB_OBJECT_MSG_ABNORMAL_EXIT_PROCESS})


class JOBOBJECT_ASSOCIATE_COMPLETION_PORT(ctypes.Structure):
    """``JOBOBJECT_ASSOCIATE_COMPLETION_PORT`` (16 bytes): the key and the port."""

    _fields_ = [("CompletionKey", ctypes.c_void_p), ("CompletionPort", ctypes.c_void_p)]


class ChildWatcher:
    """The loop's job object and the children it watches, by pid."""

    def __init__(self, port: LoopPort) -> None:
        self._port = port
        self._job: Handle | None = None
        self._children: dict[int, SubprocessTransport] = {}

    def _job_handle(self) -> int:
        if self._job is None:
            job = Handle(nt.CreateJobObjectW(), "the event loop's job object")
            try:
                limits = JOBOBJECT_EXTENDED_LIMIT_INFORMATION()
                limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK
                nt.SetInformationJobObject(job.value, JobObjectExtendedLimitInformation, limits)
                nt.SetInformationJobObject(
                    job.value, JobObjectAssociateCompletionPortInformation,
                    JOBOBJECT_ASSOCIATE_COMPLETION_PORT(JOB_KEY, self._port.handle))
            except BaseException:
                job.close()
                raise
            self._job = job
        return self._job.value

    def adopt(self, process: subprocess.Popen[bytes]) -> bool:
        """Put a suspended child in the job and resume it; ``False`` if it could not be put in
        the job (it is resumed anyway; the backstop then sees its exit)."""
        handle = nt.OpenProcess(nt.PROCESS_SET_QUOTA | nt.PROCESS_TERMINATE
                                | nt.PROCESS_SUSPEND_RESUME, process.pid)
        try:
            try:
                nt.AssignProcessToJobObject(self._job_handle(), handle)
                watched = True
            except OSError:
                watched = False
            nt.NtResumeProcess(handle)
        finally:
            nt.CloseHandle(handle)
        return watched

    def watch(self, transport: SubprocessTransport) -> None:
        pid = transport.get_pid()
        assert pid is not None
        self._children[pid] = transport

    def forget(self, transport: SubprocessTransport) -> None:
        pid = transport.get_pid()
        if pid is not None and self._children.get(pid) is transport:
            del self._children[pid]

    def message(self, message: int, pid: int) -> None:
        """A job message from the port: ``Information`` = the message, ``ApcContext`` = pid."""
        if message in _EXIT_MESSAGES:
            transport = self._children.get(pid)
            if transport is not None:
                transport._check_exit()

    @property
    def watched(self) -> int:
        return len(self._children)

    def close(self) -> None:
        self._children.clear()
        if self._job is not None:
            self._job.close()  # no kill-on-close limit: children outlive the loop, as asyncio's
            self._job = None


def _spawn(args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any, bufsize: int,
           **kwargs: Any) -> tuple[subprocess.Popen[bytes], list[Handle | None]]:
    """Start a suspended child; returns it and our ends ``[stdin, stdout, stderr]`` (``None``
    where no pipe was asked)."""
    ours: list[Handle | None] = [None, None, None]
    theirs: list[int] = []
    child: list[Any] = [stdin, stdout, stderr]
    try:
        for index, spec in enumerate((stdin, stdout, stderr)):
            if spec != subprocess.PIPE:
                continue
            our_end, fd = child_stdio_pipe(child_reads=index == 0)
            ours[index] = ChildPipe(our_end.detach(), our_end.description)
            theirs.append(fd)
            child[index] = fd
        flags = kwargs.pop("creationflags", 0) | CREATE_SUSPENDED
        process = popen(args, shell=shell, stdin=child[0], stdout=child[1], stderr=child[2],
                        bufsize=bufsize, creationflags=flags, **kwargs)
    except BaseException:
        for handle in ours:
            if handle is not None:
                handle.close()
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    return process, ours


class SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    """asyncio's subprocess transport on the loop's pipes and job object."""

    _loop: Any
    _proc: Any

    def _start(self, args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any,
               bufsize: int, **kwargs: Any) -> None:
        loop = self._loop
        process, ours = _spawn(args, shell, stdin, stdout, stderr, bufsize, **kwargs)
        # BaseSubprocessTransport connects proc.stdin/stdout/stderr with connect_*_pipe.
        process.stdin, process.stdout, process.stderr = ours  # type: ignore[assignment]
        self._proc = process
        self._backstop: asyncio.TimerHandle | None = None
        try:
            loop._children.adopt(process)
        except BaseException:
            process.kill()
            process.wait()
            for handle in ours:
                if handle is not None:
                    handle.close()
            raise
        # The pid is known now; BaseSubprocessTransport sets self._pid after _start returns.
        self._pid = process.pid
        loop._children.watch(self)
        self._backstop = loop.call_later(BACKSTOP_SECONDS, self._check_exit)

    def _check_exit(self) -> None:
        """Called on the child's job message, and by the backstop timer."""
        if self._backstop is not None:
            self._backstop.cancel()
            self._backstop = None
        if self._returncode is not None or self._proc is None:
            return
        returncode = self._proc.poll()
        if returncode is None:
            # Still running (a backstop check, or a message that raced the exit code).
            self._backstop = self._loop.call_later(BACKSTOP_SECONDS, self._check_exit)
            return
        self._loop._children.forget(self)
        self._stdin_reader_closed()
        self._process_exited(returncode)

    def _stdin_reader_closed(self) -> None:
        """The child exited: nothing reads its stdin any more. (A Proactor loop sees this with
        a read on its duplex stdin pipe; ours is one-way, so the exit tells.)"""
        stdin = self._pipes.get(0)
        pipe = getattr(stdin, "pipe", None)
        if isinstance(pipe, WritePipeTransport):
            pipe.reader_closed()

    async def _connect_pipes(self, waiter: asyncio.Future[Any] | None) -> None:
        await super()._connect_pipes(waiter)
        if self._closed:
            # Closed while connecting: close() saw no pipe yet, so it closed none.
            for proto in self._pipes.values():
                pipe = getattr(proto, "pipe", None)
                if pipe is not None:
                    pipe.close()
        elif self._returncode is not None:
            self._stdin_reader_closed()  # it exited before its stdin was connected

    def close(self) -> None:
        super().close()
        if self._returncode is not None and self._backstop is not None:
            self._backstop.cancel()
            self._backstop = None

