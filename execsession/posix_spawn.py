"""Starting children off the loop's thread (POSIX): ``posix_spawnp`` through ctypes, on a few
spawner threads.

Why not on the loop thread, and why not ``os.posix_spawnp`` or ``subprocess``: a spawn's cost is
mostly the kernel's — the new process gets a copy of the parent's descriptor table and closes
every close-on-exec descriptor at ``exec``, so each spawn pays for every descriptor the other
live sessions hold (ACTIVE_KB B8: 6.4 ms per child with 1,000 live sessions). Done on the loop
thread, that is time no session is served; done serially, it is 1,000 spawns one after the other.
``vfork``-style spawning (glibc's ``posix_spawn`` is ``clone(CLONE_VM | CLONE_VFORK)``) suspends
only the calling thread, so spawns from other threads run while the loop serves — but only if
the call releases the GIL: CPython 3.11's ``os.posix_spawnp`` holds it for the whole spawn
(measured: a thread looping on it halved a busy main thread's iterations), and
``subprocess.Popen`` releases it only around its ``vfork`` after ~150 µs of Python. A ctypes
call releases the GIL for the foreign call, and glibc's ``posix_spawnp`` does everything the
backend needs in C between the clone and the ``exec`` — no Python runs in the child:

- stdio on the given pipe ends (``adddup2``), ``/dev/null`` for a dropped stderr (``addopen``);
- every other descriptor closed (``addclosefrom_np``, glibc 2.34: what ``close_fds=True`` does,
  also for descriptors someone made inheritable);
- the working directory (``addchdir_np``, glibc 2.29);
- a new session, so ``killpg`` reaches the whole tree (``POSIX_SPAWN_SETSID``, glibc 2.26);
- SIGPIPE and SIGXFSZ back to their defaults (Python ignores them; an ignored signal stays
  ignored across ``exec``), and an empty signal mask (a spawner thread's mask is inherited).

``exec`` failures (no such program) come back as the call's error code: glibc reports them
through the memory the vforked child shares with its parent. Where these functions are missing
(not glibc, or an old one), or an argument needs what they cannot do, :func:`spawn` falls back
to ``subprocess.Popen`` — still on a spawner thread.

The threads: at most ``max_threads``, started on demand, each ending after ``IDLE_SECONDS``
without work, and all joined by :meth:`Spawner.close` (a job still queued then never starts).
A job is queued, running or done; :meth:`SpawnJob.cancel` of a queued job means its child never
exists, of a running one waits for it (one spawn) so that the caller can kill and reap it.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - Windows spawns with CreateProcess
    raise ImportError("execsession.posix_spawn needs POSIX")

import collections
import ctypes
import ctypes.util
import errno
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

__all__ = ["Process", "SpawnJob", "Spawner", "spawn"]

IDLE_SECONDS = 2.0
"""A spawner thread with nothing to do for this long ends (a new one starts with the next job)."""
_DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ")
                         if hasattr(signal, name))

# glibc's flag values (spawn.h); used only when the glibc functions below are all present.
_POSIX_SPAWN_SETSIGDEF = 0x04
_POSIX_SPAWN_SETSIGMASK = 0x08
_POSIX_SPAWN_SETSID = 0x80
# Opaque glibc types, given generous room: posix_spawn_file_actions_t is 80 bytes on x86-64,
# posix_spawnattr_t 336, sigset_t 128.
_FileActions = ctypes.c_uint64 * 64
_Attributes = ctypes.c_uint64 * 128
_SigSet = ctypes.c_uint64 * 32


def _load_glibc() -> ctypes.CDLL | None:
    """libc, if it is a glibc with every function :func:`_spawn_glibc` needs."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None  # not glibc (musl has no gnu_get_libc_version)
    version.restype = ctypes.c_char_p
    major, _, minor = (version() or b"0.0").decode().partition(".")
    try:
        if (int(major), int(minor.split(".")[0])) < (2, 34):
            return None
    except ValueError:
        return None
    names = ("posix_spawnp", "posix_spawn_file_actions_init", "posix_spawn_file_actions_destroy",
             "posix_spawn_file_actions_adddup2", "posix_spawn_file_actions_addopen",
             "posix_spawn_file_actions_addclosefrom_np", "posix_spawn_file_actions_addchdir_np",
             "posix_spawnattr_init", "posix_spawnattr_destroy", "posix_spawnattr_setflags",
             "posix_spawnattr_setsigdefault", "posix_spawnattr_setsigmask", "sigemptyset",
             "sigaddset")
    if not all(hasattr(libc, name) for name in names):
        return None
    pointer, c_int, c_char_p = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    signatures: dict[str, list[type]] = {
        "posix_spawn_file_actions_init": [pointer],
        "posix_spawn_file_actions_destroy": [pointer],
        "posix_spawn_file_actions_adddup2": [pointer, c_int, c_int],
        "posix_spawn_file_actions_addopen": [pointer, c_int, c_char_p, c_int, ctypes.c_uint],
        "posix_spawn_file_actions_addclosefrom_np": [pointer, c_int],
        "posix_spawn_file_actions_addchdir_np": [pointer, c_char_p],
        "posix_spawnattr_init": [pointer],
        "posix_spawnattr_destroy": [pointer],
        "posix_spawnattr_setflags": [pointer, ctypes.c_short],
        "posix_spawnattr_setsigdefault": [pointer, pointer],
        "posix_spawnattr_setsigmask": [pointer, pointer],
        "sigemptyset": [pointer],
        "sigaddset": [pointer, c_int],
        "posix_spawnp": [ctypes.POINTER(ctypes.c_int), c_char_p, pointer, pointer,
                         ctypes.POINTER(c_char_p), ctypes.POINTER(c_char_p)],
    }
    for name, argtypes in signatures.items():
        function = getattr(libc, name)
        function.argtypes = argtypes
        function.restype = c_int
    return libc


_LIBC = _load_glibc()


def _check(code: int, what: str) -> None:
    """The posix_spawn family returns an error number (0: success), not -1 and errno."""
    if code:
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _strings(items: Sequence[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    """A NULL-terminated ``char *[]`` (the bytes objects stay referenced by the array)."""
    array = (ctypes.c_char_p * (len(items) + 1))(*items)
    return array


def _spawn_glibc(libc: ctypes.CDLL, argv: list[bytes], envp: list[bytes], cwd: bytes | None,
                 stdio: tuple[int, int, int | None]) -> int:
    """glibc's ``posix_spawnp`` (the GIL released for the call): the child's pid."""
    actions, attributes, defaults, empty = _FileActions(), _Attributes(), _SigSet(), _SigSet()
    _check(libc.posix_spawn_file_actions_init(actions), "posix_spawn_file_actions_init")
    try:
        _check(libc.posix_spawnattr_init(attributes), "posix_spawnattr_init")
        try:
            for target, fd in enumerate(stdio):
                if fd is None:
                    _check(libc.posix_spawn_file_actions_addopen(
                        actions, target, b"/dev/null", os.O_RDWR, 0), "addopen")
                else:
                    _check(libc.posix_spawn_file_actions_adddup2(actions, fd, target), "adddup2")
            _check(libc.posix_spawn_file_actions_addclosefrom_np(actions, 3), "addclosefrom_np")
            if cwd is not None:
                _check(libc.posix_spawn_file_actions_addchdir_np(actions, cwd), "addchdir_np")
            libc.sigemptyset(defaults)
            libc.sigemptyset(empty)
            for number in _DEFAULT_SIGNALS:
                libc.sigaddset(defaults, int(number))
            _check(libc.posix_spawnattr_setsigdefault(attributes, defaults), "setsigdefault")
            _check(libc.posix_spawnattr_setsigmask(attributes, empty), "setsigmask")
            _check(libc.posix_spawnattr_setflags(
                attributes, _POSIX_SPAWN_SETSID | _POSIX_SPAWN_SETSIGDEF
                | _POSIX_SPAWN_SETSIGMASK), "setflags")
            pid = ctypes.c_int(0)
            code = libc.posix_spawnp(ctypes.byref(pid), argv[0], actions, attributes,
                                     _strings(argv), _strings(envp))
        finally:
            libc.posix_spawnattr_destroy(attributes)
    finally:
        libc.posix_spawn_file_actions_destroy(actions)
    if code:
        # exec's own error (ENOENT, EACCES...), or the chdir's: name what was missing.
        name = argv[0]
        if cwd is not None and code in (errno.ENOENT, errno.ENOTDIR, errno.EACCES) \
                and not os.path.isdir(cwd):
            name = cwd
        raise OSError(code, os.strerror(code), os.fsdecode(name))
    return pid.value


class Process:
    """A started child: its pid, and reaping it (``Popen`` where the fallback made it one)."""

    __slots__ = ("pid", "popen", "returncode")

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.popen = popen
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Reap it if it has exited: its exit code (negative signal number), else ``None``."""
        if self.returncode is not None:
            return self.returncode
        if self.popen is not None:
            self.returncode = self.popen.poll()
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: its code is lost
            self.returncode = 0
            return 0
        if pid == 0:
            return None
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Reap it, waiting up to ``timeout`` seconds (``None``: for ever); ``None`` if it
        still runs then."""
        if self.popen is not None:
            try:
                self.returncode = self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                _unreaped.append(self)  # reaped by a later wait of another child
                return None
            time.sleep(delay)
            delay = min(0.05, delay * 2)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the child alone (unless it was reaped: then its pid may not be ours)."""
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


_unreaped: list[Process] = []
"""Children that outlived :meth:`Process.wait`'s timeout: retried at each spawn."""


def _reap_leftovers() -> None:
    for process in list(_unreaped):
        if process.poll() is not None:
            try:
                _unreaped.remove(process)
            except ValueError:  # another thread got it
                pass


def spawn(command: Sequence[str] | str, *, shell: bool, stdin: int, stdout: int,
          stderr: int | None, cwd: str | None = None,
          env: dict[str, str] | None = None) -> Process:
    """Start ``command`` in a new session with the given stdio fds (``stderr=None``:
    ``/dev/null``), every other descriptor closed. Raises ``OSError`` (e.g. the program is
    missing). Blocking: call it from a spawner thread."""
    if _unreaped:
        _reap_leftovers()
    if isinstance(command, str):
        if not shell:
            raise TypeError("a command string needs shell=True")
        args = ["/bin/sh", "-c", command]
    else:
        args = ["/bin/sh", "-c", *command] if shell else list(command)
    stdio = (stdin, stdout, stderr)
    libc = _LIBC
    # posix_spawnp searches the *caller's* PATH; Popen the given environment's. dup2 onto a
    # descriptor below 3 that is itself one of the targets needs Popen's shuffling.
    if (libc is not None and not (env is not None and env.get("PATH") != os.environ.get("PATH"))
            and all(fd is None or fd > 2 for fd in stdio)):
        argv = [os.fsencode(arg) for arg in args]
        source = os.environb if env is None else {
            os.fsencode(key): os.fsencode(value) for key, value in env.items()}
        envp = [key + b"=" + value for key, value in source.items()]
        # A C string ends at its first NUL: refuse what would be cut short (as Popen does).
        if any(b"\0" in item for item in argv + envp) or (
                env is not None and any(b"=" in key for key in source)):
            raise ValueError("embedded null byte in the command or environment, or '=' in "
                             "an environment variable's name")
        return Process(_spawn_glibc(libc, argv, envp, None if cwd is None else os.fsencode(cwd),
                                    stdio))
    popen = subprocess.Popen(
        args, stdin=stdin, stdout=stdout,
        stderr=subprocess.DEVNULL if stderr is None else stderr,
        start_new_session=True, close_fds=True, cwd=cwd, env=env)
    return Process(popen.pid, popen)


class SpawnJob:
    """One child to start on a spawner thread: ``start()`` does it (returns the process or
    raises); ``done(job)`` is then called on that thread (the loop hands it to itself)."""

    QUEUED, RUNNING, DONE, CANCELLED = "queued", "running", "done", "cancelled"

    __slots__ = ("_done", "_finished", "_lock", "_start", "error", "result", "state")

    def __init__(self, start: Callable[[], Process], done: Callable[[SpawnJob], None]) -> None:
        self._start = start
        self._done: Callable[[SpawnJob], None] | None = done
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self.state = self.QUEUED
        self.result: Process | None = None
        self.error: BaseException | None = None

    def _claim(self) -> bool:
        with self._lock:
            if self.state != self.QUEUED:
                return False
            self.state = self.RUNNING
            return True

    def _run(self) -> None:
        try:
            result: Process | None = self._start()
            error: BaseException | None = None
        except BaseException as failure:  # handed to the loop's thread
            result, error = None, failure
        with self._lock:
            self.result, self.error = result, error
            self.state = self.DONE
            done, self._done = self._done, None
        self._finished.set()
        if done is not None:
            done(self)

    def cancel(self) -> None:
        """The caller lost interest: a queued job never runs; a running one is waited for
        (its child, if any, is then :attr:`result`: the caller kills and reaps it). No
        ``done`` call after this returns."""
        with self._lock:
            self._done = None
            if self.state == self.QUEUED:
                self.state = self.CANCELLED
                self._finished.set()
                return
        self._finished.wait()


class Spawner:
    """A few threads running :class:`SpawnJob` s in order."""

    def __init__(self, max_threads: int = 2) -> None:
        self.max_threads = max(1, max_threads)
        self._queue: collections.deque[SpawnJob] = collections.deque()
        self._condition = threading.Condition(threading.Lock())
        self._threads: set[threading.Thread] = set()
        self._idle = 0
        self._closed = False

    @property
    def threads(self) -> int:
        """How many spawner threads run now."""
        with self._condition:
            return len(self._threads)

    def submit(self, job: SpawnJob) -> None:
        with self._condition:
            if self._closed:
                raise RuntimeError("the spawner is closed")
            self._queue.append(job)
            if self._idle:
                self._condition.notify()
            elif len(self._threads) < self.max_threads:
                thread = threading.Thread(target=self._work, name="execsession-spawner",
                                          daemon=True)
                self._threads.add(thread)
                thread.start()

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._condition:
                while not self._queue and not self._closed:
                    self._idle += 1
                    woken = self._condition.wait(IDLE_SECONDS)
                    self._idle -= 1
                    if not woken and not self._queue:
                        self._threads.discard(me)
                        return
                if self._closed:
                    self._threads.discard(me)
                    return
                job = self._queue.popleft()
            if job._claim():
                job._run()

    def close(self) -> None:
        """Cancel what is queued (those children never start), let running spawns finish, and
        join every thread."""
        with self._condition:
            self._closed = True
            queued = list(self._queue)
            self._queue.clear()
            threads = list(self._threads)
            self._condition.notify_all()
        for job in queued:
            job.cancel()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()
