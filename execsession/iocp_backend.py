"""The IOCP backend (Windows): one completion port per loop carries everything.

* Child stdio: overlapped named pipes (``iocp.create_pipe``); our ends are associated with the
  port and read/written with overlapped ``ReadFile``/``WriteFile``; the child's ends are
  synchronous (a child expects ordinary handles) and handed over by ``subprocess``, which
  duplicates them as inheritable for ``CreateProcess`` only.
* The socket: AFD polls issued on helper handles associated with the same port (one poll per
  socket at a time; a wider interest cancels and re-issues), then non-blocking ``recv``/``send``.
  A write is tried at once (it usually succeeds); a read is tried at once only after a read
  that filled its buffer (more is probably waiting), else it waits for a poll: under Wine every
  call is a wineserver round trip, and a ``recv`` that would block is one wasted.
* The child's exit is polled (``WaitForSingleObject`` with no wait): every ``POLL_IDLE_MAX``
  seconds at most while its output is open (a process it started may hold the output after
  the child exited: the session must still see the exit, see ``drain_timeout``), and quickly
  (``POLL_MIN`` backing off to ``POLL_MAX``) once its output ended or it was killed. Under Wine
  each poll is a wineserver round trip, so idle sessions poll seldom.
* The process tree: the child is created suspended, put in a job object with
  ``KILL_ON_JOB_CLOSE``, then resumed, so every process it starts is in the job before it can
  start any; ``TerminateJobObject`` kills the tree, and closing the job kills what is left.
* Memory the kernel may write (an ``OVERLAPPED``, a read buffer, a poll's ``AFD_POLL_INFO``)
  belongs to an :class:`iocp.Operation` that the port keeps alive until its completion is
  dequeued, so a stream closed with requests pending simply ignores their completions.
"""

from __future__ import annotations

import sys

if sys.platform != "win32":  # pragma: no cover - open_loop() refuses first
    raise ImportError("execsession.iocp_backend needs Windows (or Wine)")

import ctypes
import msvcrt
import os
import socket
import subprocess
from collections.abc import Callable, Sequence

from afd import AfdHelperHandle, AfdPollEvents, AfdPollOperation, base_socket_handle
from iocp import (
    PACKET,
    WAKEUP_KEY,
    Completion,
    CompletionPort,
    Handle,
    IssueResult,
    Operation,
    PortClosedError,
    ReadOperation,
    WriteOperation,
    create_pipe,
    start_read,
    start_write,
)
from ntdll import NtStatusError
from ntdll import functions as nt
from ntdll.structures import JOBOBJECT_EXTENDED_LIMIT_INFORMATION, OVERLAPPED

from .config import StderrMode
from .loop import Child, Loop, ReadCallback, Stream, Timer, WriteCallback

__all__ = ["IocpLoop"]

PIPE_KEY = 1
HELPER_KEY = 2
SOCKET_KEY = 3
SOCKET_IO_ENV = "NTAFD_EXEC_SOCKET_IO"
SOCKET_IO = ("afd", "overlapped")
DEFAULT_SOCKET_IO = "afd"
"""How the IOCP backend does socket I/O: AFD polls + non-blocking calls, or overlapped
``WSARecv``/``WSASend`` (see ACTIVE_KB.md for the measurements behind the default)."""
GROUP_SIZE = 32
"""Sockets per AFD helper handle (as ``afd.AfdPoller``: the cost of a cancel grows with the
polls pending on one handle)."""
READ_MAX = 256 * 1024
DEQUEUE_BATCH = 256
POLL_MIN = 0.002
POLL_MAX = 0.1
POLL_IDLE_MAX = 1.0
"""Slowest exit poll while the child's output is still open."""

CREATE_SUSPENDED = 0x00000004
CREATE_NEW_PROCESS_GROUP = 0x00000200  # Ctrl-C in the server's console does not reach it
_READ_EVENTS = (AfdPollEvents.RECEIVE | AfdPollEvents.DISCONNECT | AfdPollEvents.ABORT
                | AfdPollEvents.LOCAL_CLOSE)
_WRITE_EVENTS = AfdPollEvents.SEND | AfdPollEvents.ABORT | AfdPollEvents.LOCAL_CLOSE


class _HelperSlot:
    def __init__(self, port: CompletionPort) -> None:
        self.helper = AfdHelperHandle(port, HELPER_KEY)
        self.members = 0


class IocpLoop(Loop):
    """:class:`Loop` on one I/O completion port (pipes, AFD polls, wake-ups)."""

    backend = "iocp"
    WRITES_COMPLETE_LATER = True
    MAX_WAIT = 0.5  # Python runs signal handlers (Ctrl-C) only between waits

    def __init__(self, socket_io: str | None = None) -> None:
        super().__init__()
        socket_io = socket_io or os.environ.get(SOCKET_IO_ENV, "") or DEFAULT_SOCKET_IO
        if socket_io not in SOCKET_IO:
            raise ValueError(f"socket_io={socket_io!r} (or ${SOCKET_IO_ENV}): expected one of "
                             f"{', '.join(SOCKET_IO)}")
        self.socket_io = socket_io
        self.port = CompletionPort()
        self._slots: list[_HelperSlot] = []
        self._acceptors: dict[int, _AfdAcceptor] = {}

    def _wait(self, timeout: float | None) -> None:
        completions = self.port.dequeue(timeout=timeout, max_entries=DEQUEUE_BATCH)
        for position, completion in enumerate(completions):
            try:
                self._dispatch(completion)
            except BaseException:
                # Ctrl-C (or another asynchronous exception) mid-batch: the rest of the batch
                # was dequeued, so its owners get it on the next run instead of never.
                for rest in completions[position + 1:]:
                    self.call_soon(self._dispatch, rest)
                raise

    def _dispatch(self, completion: Completion) -> None:
        """Hand one completion to its owner (a stream, an acceptor), isolated: an exception
        ends that owner's session only (:meth:`Loop._callback_failed`)."""
        operation = completion.operation
        if completion.key == WAKEUP_KEY or operation is None:
            return
        owner = operation.tag
        if owner is not None:
            try:
                owner.completed(operation)
            except Exception as error:
                self._callback_failed(owner.completed, error, owner)

    def _wakeup(self) -> None:
        try:
            self.port.wakeup()
        except (PortClosedError, OSError):
            pass

    def acquire_helper(self) -> _HelperSlot:
        for slot in self._slots:
            if slot.members < GROUP_SIZE:
                slot.members += 1
                return slot
        slot = _HelperSlot(self.port)
        slot.members = 1
        self._slots.append(slot)
        return slot

    # -- factories -----------------------------------------------------------------------------
    def socket_stream(self, sock: socket.socket) -> Stream:
        if self.socket_io == "overlapped":
            return _OverlappedSocketStream(self, sock)
        return _AfdSocketStream(self, sock)

    def spawn(self, command: Sequence[str] | str, *, shell: bool, stderr: StderrMode,
              pipe_sizes: tuple[int, int, int], cwd: str | None = None,
              env: dict[str, str] | None = None) -> Child:
        return _WindowsChild(self, command, shell=shell, stderr=stderr, pipe_sizes=pipe_sizes,
                             cwd=cwd, env=env)

    def add_acceptor(self, listener: socket.socket, callback: Callable[[], None]) -> None:
        self._acceptors[listener.fileno()] = _AfdAcceptor(self, listener, callback)

    def remove_acceptor(self, listener: socket.socket) -> None:
        acceptor = self._acceptors.pop(listener.fileno(), None)
        if acceptor is not None:
            acceptor.close()

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        for slot in self._slots:
            slot.helper.close()  # the kernel cancels the polls still pending on it
        self.port.close()  # dequeues those cancellations (and any other late completion)
        self._slots.clear()


def _read_operation(owner: object, operation: ReadOperation | None,
                    size: int) -> ReadOperation:
    """``operation`` again if its buffer holds ``size`` bytes, else one with a buffer of
    ``size``: a stream's reads are as large as its session's buffer, so 200 idle sessions do not
    hold 200 buffers of the largest read size. Never called while a read is pending."""
    if operation is not None:
        buffer = operation.buffer  # raises OperationBusyError if still pending
        if buffer is not None and ctypes.sizeof(buffer) >= size:
            return operation
    return ReadOperation(owner, ctypes.create_string_buffer(size))


# -- pipes ---------------------------------------------------------------------------------------
class _IocpStream(Stream):
    """What the IOCP backend's streams share: callbacks deferred through the loop (never
    re-entrant) and dropped once the stream is closed; cancelling requests still pending."""

    _loop: IocpLoop
    _closed: bool

    def _deliver_read(self, callback: ReadCallback, data: bytes,
                      error: BaseException | None) -> None:
        if not self._closed:
            callback(data, error)

    def _deliver_write(self, callback: WriteCallback, count: int,
                       error: BaseException | None) -> None:
        if not self._closed:
            callback(count, error)

    def _cancel_pending(self, *operations: Operation | None) -> None:
        # A cancelled request still completes (STATUS_CANCELLED); the port keeps its memory
        # until that completion is dequeued, so nothing here may free it.
        for operation in operations:
            if operation is not None and operation.pending:
                try:
                    self._loop.port.cancel(operation)
                except OSError:
                    pass


class _PipeStream(_IocpStream):
    """Our overlapped end of a child's pipe."""

    def __init__(self, loop: IocpLoop, handle: Handle) -> None:
        self._loop = loop
        self._handle = handle
        self._closed = False
        self._read_op: ReadOperation | None = None
        self._read_cb: ReadCallback | None = None
        self._write_op: WriteOperation | None = None
        self._write_cb: WriteCallback | None = None
        try:
            loop.port.associate(handle.value, PIPE_KEY)
        except BaseException:
            handle.close()
            raise

    def read(self, size: int, callback: ReadCallback) -> None:
        if self._closed:
            raise ValueError("read on a closed pipe")
        size = min(size, READ_MAX)
        operation = self._read_op = _read_operation(self, self._read_op, size)
        self._read_cb = callback
        try:
            start_read(self._loop.port, self._handle.value, size, tag=self, operation=operation)
        except BrokenPipeError:
            # The child closed its end: ReadFile fails at once and queues nothing.
            self._read_cb = None
            self._loop.call_soon(self._deliver_read, callback, b"", None)
        except OSError as error:
            self._read_cb = None
            self._loop.call_soon(self._deliver_read, callback, b"", error)

    def write(self, data: bytes, callback: WriteCallback) -> None:
        if self._closed:
            raise ValueError("write on a closed pipe")
        self._write_cb = callback
        try:
            self._write_op = start_write(self._loop.port, self._handle.value, data, tag=self)
        except OSError as error:  # BrokenPipeError: the child closed its stdin
            self._write_cb = None
            self._loop.call_soon(self._deliver_write, callback, 0, error)

    def completed(self, operation: Operation) -> None:
        if self._closed:
            return
        if isinstance(operation, ReadOperation):
            read_cb, self._read_cb = self._read_cb, None
            if read_cb is None:
                return
            if operation.at_end:
                read_cb(b"", None)
            elif operation.succeeded:
                read_cb(operation.data, None)
            else:
                read_cb(b"", NtStatusError(operation.status or 0, "ReadFile"))
        elif isinstance(operation, WriteOperation):
            write_cb, self._write_cb = self._write_cb, None
            self._write_op = None
            if write_cb is None:
                return
            if operation.succeeded:
                write_cb(operation.information, None)
            else:
                write_cb(0, BrokenPipeError(f"WriteFile: status {operation.status or 0:#x}"))

    def shutdown_write(self) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._read_cb = self._write_cb = None
        self._cancel_pending(self._read_op, self._write_op)
        self._handle.close()


# -- sockets -------------------------------------------------------------------------------------
class _AfdSocketStream(_IocpStream):
    """A non-blocking socket; waits for readiness with one AFD poll at a time."""

    def __init__(self, loop: IocpLoop, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._base = base_socket_handle(sock)
        self._slot = loop.acquire_helper()
        self._closed = False
        self._poll: AfdPollOperation | None = None
        self._asked = AfdPollEvents(0)
        self._cancelling = False
        self._read: tuple[int, ReadCallback] | None = None
        self._write: tuple[bytes, WriteCallback] | None = None
        self._eager = False

    # -- requests ------------------------------------------------------------------------------
    def read(self, size: int, callback: ReadCallback) -> None:
        if self._closed:
            raise ValueError("read on a closed socket stream")
        if self._eager:  # the last read filled its buffer: more is probably waiting
            try:
                data = self._sock.recv(size)
            except BlockingIOError:
                pass
            except OSError as error:
                self._loop.call_soon(self._deliver_read, callback, b"", error)
                return
            else:
                self._eager = len(data) == size
                self._loop.call_soon(self._deliver_read, callback, data, None)
                return
        self._read = (size, callback)
        self._arm()

    def write(self, data: bytes, callback: WriteCallback) -> None:
        if self._closed:
            raise ValueError("write on a closed socket stream")
        try:
            count = self._sock.send(data)
        except BlockingIOError:
            self._write = (data, callback)
            self._arm()
        except OSError as error:
            self._loop.call_soon(self._deliver_write, callback, 0, error)
        else:
            self._loop.call_soon(self._deliver_write, callback, count, None)

    # -- polling -------------------------------------------------------------------------------
    def _arm(self) -> None:
        if self._closed:
            return
        wanted = AfdPollEvents(0)
        if self._read is not None:
            wanted |= _READ_EVENTS
        if self._write is not None:
            wanted |= _WRITE_EVENTS
        if not wanted:
            return
        if self._poll is not None:
            if self._cancelling or not wanted & ~self._asked:
                return  # covered, or re-issued once the cancellation is dequeued
            self._cancelling = True
            self._slot.helper.cancel(self._poll)
            return
        try:
            self._poll = self._slot.helper.poll([(self._base, wanted)], tag=self)
        except NtStatusError as error:  # the socket is no longer valid: fail what waits
            self._fail(error)
            return
        self._asked = wanted

    def completed(self, operation: Operation) -> None:
        self._poll = None
        self._cancelling = False
        if self._closed:
            return
        assert isinstance(operation, AfdPollOperation)
        failed = not operation.succeeded and not operation.cancelled
        events = AfdPollEvents(0)
        for entry in operation.results:
            events |= entry.events
        if self._read is not None and (failed or events & _READ_EVENTS):
            size, read_cb = self._read
            try:
                data = self._sock.recv(size)
            except BlockingIOError:
                pass
            except OSError as error:
                self._read = None
                read_cb(b"", error)
            else:
                self._read = None
                self._eager = len(data) == size
                read_cb(data, None)
        if self._write is not None and not self._closed and (failed or events & _WRITE_EVENTS):
            data, write_cb = self._write
            try:
                count = self._sock.send(data)
            except BlockingIOError:
                pass
            except OSError as error:
                self._write = None
                write_cb(0, error)
            else:
                self._write = None
                write_cb(count, None)
        self._arm()

    def _fail(self, error: BaseException) -> None:
        read, self._read = self._read, None
        write, self._write = self._write, None
        if read is not None:
            self._loop.call_soon(self._deliver_read, read[1], b"", error)
        if write is not None:
            self._loop.call_soon(self._deliver_write, write[1], 0, error)

    def shutdown_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._read = self._write = None
        if self._poll is not None and not self._cancelling:
            try:
                self._slot.helper.cancel(self._poll)
            except OSError:
                pass
        self._slot.members -= 1


class _OverlappedSocketStream(_IocpStream):
    """A socket associated with the port, read and written with overlapped ``WSARecv`` /
    ``WSASend``: the completion carries the bytes, no readiness step. The socket stays
    associated with the port until it is closed (a handle is associated once, for life)."""

    def __init__(self, loop: IocpLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock
        self._handle = sock.fileno()
        loop.port.associate(self._handle, SOCKET_KEY)
        self._closed = False
        self._read_op: ReadOperation | None = None
        self._read_cb: ReadCallback | None = None
        self._write_op: WriteOperation | None = None
        self._write_cb: WriteCallback | None = None

    def read(self, size: int, callback: ReadCallback) -> None:
        if self._closed:
            raise ValueError("read on a closed socket stream")
        size = min(size, READ_MAX)
        operation = self._read_op = _read_operation(self, self._read_op, size)
        buffer = operation.buffer  # raises OperationBusyError if a read is still pending
        assert buffer is not None
        self._read_cb = callback

        def issue(overlapped: OVERLAPPED) -> IssueResult:
            try:
                nt.WSARecv(self._handle, buffer, size, overlapped)
            except OSError as error:
                return error
            return PACKET

        try:
            self._loop.port.start(operation, self._handle, issue)
        except OSError as error:
            self._read_cb = None
            self._loop.call_soon(self._deliver_read, callback, b"", error)

    def write(self, data: bytes, callback: WriteCallback) -> None:
        if self._closed:
            raise ValueError("write on a closed socket stream")
        buffer = ctypes.create_string_buffer(data, len(data))
        operation = WriteOperation(self, buffer)
        self._write_cb = callback

        def issue(overlapped: OVERLAPPED) -> IssueResult:
            try:
                nt.WSASend(self._handle, buffer, len(data), overlapped)
            except OSError as error:
                return error
            return PACKET

        try:
            self._loop.port.start(operation, self._handle, issue)
            self._write_op = operation
        except OSError as error:
            self._write_cb = None
            self._loop.call_soon(self._deliver_write, callback, 0, error)

    def completed(self, operation: Operation) -> None:
        if self._closed:
            return
        failure = None
        if not operation.succeeded:
            failure = ConnectionResetError(
                f"socket I/O failed: {NtStatusError(operation.status or 0, 'WSARecv')}")
        if isinstance(operation, ReadOperation):
            read_cb, self._read_cb = self._read_cb, None
            if read_cb is not None:
                if failure is not None:
                    read_cb(b"", failure)
                else:
                    read_cb(operation.data, None)
        else:
            write_cb, self._write_cb = self._write_cb, None
            self._write_op = None
            if write_cb is not None:
                if failure is not None:
                    write_cb(0, failure)
                else:
                    write_cb(operation.information, None)

    def shutdown_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._read_cb = self._write_cb = None
        self._cancel_pending(self._read_op, self._write_op)


class _AfdAcceptor:
    """Calls back whenever a listening socket has a connection waiting (``AFD_POLL_ACCEPT``)."""

    def __init__(self, loop: IocpLoop, listener: socket.socket,
                 callback: Callable[[], None]) -> None:
        listener.setblocking(False)
        self._loop = loop
        self._base = base_socket_handle(listener)
        self._slot = loop.acquire_helper()
        self._callback = callback
        self._closed = False
        self._poll: AfdPollOperation | None = None
        self._issue()

    def _issue(self) -> None:
        self._poll = self._slot.helper.poll([(self._base, AfdPollEvents.ACCEPT)], tag=self)

    def completed(self, operation: Operation) -> None:
        self._poll = None
        if self._closed:
            return
        try:
            self._callback()
        except Exception as error:  # logged; the listener is watched again all the same
            self._loop._callback_failed(self._callback, error)
        if not self._closed:
            self._issue()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._poll is not None:
            try:
                self._slot.helper.cancel(self._poll)
            except OSError:
                pass
        self._slot.members -= 1


# -- children ------------------------------------------------------------------------------------
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


def _fd_for(handle: Handle, flags: int) -> int:
    """A C runtime fd owning ``handle`` (what ``subprocess`` takes); closing it closes it."""
    value = handle.detach()
    try:
        return msvcrt.open_osfhandle(value, flags)
    except BaseException:
        nt.CloseHandle(value)
        raise


class _WindowsChild(Child):
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
            stdin_r, stdin_w = create_pipe(overlapped_read=False, overlapped_write=True,
                                           buffer_size=pipe_sizes[0])
            ours.append(stdin_w)
            theirs.append(_fd_for(stdin_r, os.O_RDONLY))
            stdout_r, stdout_w = create_pipe(overlapped_read=True, overlapped_write=False,
                                             buffer_size=pipe_sizes[1])
            ours.append(stdout_r)
            theirs.append(_fd_for(stdout_w, os.O_WRONLY))
            stderr_r: Handle | None = None
            child_stderr: int
            if stderr is StderrMode.SEPARATE:
                stderr_r, stderr_w = create_pipe(overlapped_read=True, overlapped_write=False,
                                                 buffer_size=pipe_sizes[2])
                ours.append(stderr_r)
                child_stderr = _fd_for(stderr_w, os.O_WRONLY)
                theirs.append(child_stderr)
            elif stderr is StderrMode.MERGE:
                child_stderr = subprocess.STDOUT
            else:
                child_stderr = subprocess.DEVNULL
            job = _kill_on_close_job()
            # Suspended until it is in the job: nothing it starts can escape the job.
            process = subprocess.Popen(
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
        streams: list[_PipeStream] = []
        try:
            for owned in ours:
                streams.append(_PipeStream(loop, owned))
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
