"""The process-group guardian (POSIX): no child outlives a server that was SIGKILLed.

Each child runs in its own session and process group (``start_new_session``), so that
``killpg`` reaches everything it started. The server kills those groups on every way out it
sees (DES3) — but a SIGKILL, or a hard crash, gives it no way out at all, and the groups live
on. So each loop that spawns children starts one small guardian process:

- It is started with its stdin on the read end of a pipe whose write end only the server
  holds (close-on-exec, and children are started with ``close_fds``). When the server is gone,
  however it died, the kernel closes that write end and the guardian reads EOF.
- The server tells it ``+PGID`` when a child (the leader of group PGID) was started, and
  ``-PGID`` once that group was killed (SIGKILL to a group is delivered to every member at
  once: the group is doomed) and *before* the child is reaped. Until the reap, the child —
  alive or a zombie — keeps its pid, and so the group id, ours; and POSIX reuses no pid while
  a process group of that id has members. So the guardian only ever holds groups that are ours.
- At EOF it sends SIGKILL to every group still registered and exits. One signal, not SIGTERM
  then SIGKILL after a grace: the server itself kills with SIGKILL, and a grace would let a
  group empty itself and its id be reused before the second signal.

The one window left: after the server died, init reaps a zombie leader whose group has no
other member, before the guardian's ``killpg``; the id could be reused only after the kernel's
cyclic pid allocator went round all of ``pid_max`` in those microseconds.

And one window at the start: a child runs from the moment the spawner thread's
``posix_spawnp`` returns (:mod:`execsession.posix_spawn`) until that thread, holding the GIL
again, has written ``+PGID`` — microseconds, up to the interpreter's 5 ms switch interval when
the loop's thread is busy. A SIGKILL in that window leaves that one child (its stdin pipe then
closes, so a child that reads its input ends by itself). The loop relays a child's output only
after the registration, so no client ever sees an unguarded child.

Messages are a few bytes (below ``PIPE_BUF``: atomic), written non-blocking: the server never
waits for the guardian. A write that fails (the guardian died: EPIPE; it stopped reading:
EAGAIN) makes the server log it (a warning the first time), kill what is left of that
guardian and start a new one, handing it the current groups on its command line; if none can
be started, the server keeps serving unguarded and tries again at the next child.

Why not the alternatives: ``PR_SET_PDEATHSIG`` (Linux only) needs Python code between fork
and exec (``preexec_fn``, unsafe with threads), reaches the child only, not what it started
in its group, and fires when the *thread* that forked exits, not the process.
``PR_SET_CHILD_SUBREAPER`` on the server makes orphans its own children — useless once the
server itself is dead. The guardian costs one process per loop (started with the first
child, so a loop that spawns nothing has none) and two small writes per session.

This module is also the guardian's program: it is run by path (``python -I -S
posix_guardian.py PGID...``), so it imports nothing but the standard library.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - Windows children die with their job object
    raise ImportError("execsession.posix_guardian needs POSIX process groups")

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterable

__all__ = ["GroupGuardian"]

log = logging.getLogger("execsession.guardian")


class GroupGuardian:
    """The server's side: the groups to guard, and the pipe to the guardian process.

    Thread-safe: a spawner thread registers its child the moment it started (so no SIGKILL
    of the server between the spawn and the loop's hand-over leaves it unguarded), the loop's
    thread releases groups."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._process: subprocess.Popen[bytes] | None = None
        self._write_fd: int | None = None
        self._warned = False
        self._closed = False
        self.starts = 0
        """How many guardian processes were started (a restart after a failure counts)."""

    @property
    def groups(self) -> int:
        """How many process groups are registered (children started, not yet released)."""
        return len(self._groups)

    @property
    def pid(self) -> int | None:
        """The running guardian's pid, if one runs."""
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start the guardian process now if none runs, so that registering a child is one
        write (a spawner thread registers it the moment it started; a guardian still starting
        then would leave the child unguarded for the ~30 ms a python takes to start)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the guardian is closed")
            if self._write_fd is None:
                self._start()

    def guard(self, pgid: int) -> None:
        """Register group ``pgid`` (a child just started, leading its own group)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the guardian is closed")
            self._groups.add(pgid)
            self._send(b"+%d\n" % pgid)

    def release(self, pgid: int) -> None:
        """Forget group ``pgid``: it was killed (or is known empty), and its leader is not
        reaped yet. Call it before reaping, so the guardian never holds a reusable id."""
        with self._lock:
            if pgid not in self._groups:
                return
            self._groups.discard(pgid)
            if self._write_fd is not None:
                self._send(b"-%d\n" % pgid)

    def _send(self, message: bytes) -> None:
        if self._write_fd is None:
            self._start()  # hands it every registered group, this one included
            return
        try:
            os.write(self._write_fd, message)  # < PIPE_BUF: all or nothing
        except OSError as error:  # EPIPE: it died; EAGAIN: it stopped reading
            self._lost(error)
            self._start()

    def _start(self) -> None:
        read_fd, write_fd = os.pipe()  # both close-on-exec; stdin= makes the read end its 0
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__),
                 *map(str, sorted(self._groups))],
                stdin=read_fd, stdout=subprocess.DEVNULL, close_fds=True,
                start_new_session=True, cwd="/")
        except Exception as error:  # no python to run, no fds left...: serve unguarded
            os.close(write_fd)
            self._warn("cannot start the process-group guardian (%s): a SIGKILLed server "
                       "would leave its children running", error)
            return
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        os.set_blocking(write_fd, False)
        self._write_fd = write_fd
        self.starts += 1

    def _lost(self, error: OSError) -> None:
        self._warn("the process-group guardian (pid %s) is gone (%s): starting a new one",
                   self.pid, error)
        process, self._process = self._process, None
        if process is not None:
            # SIGKILL: a stopped or hung guardian must not act on what it holds.
            try:
                process.kill()
            except OSError:
                pass
            process.poll()  # if not reaped yet, subprocess reaps it later
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None

    def _warn(self, message: str, *args: object) -> None:
        (log.debug if self._warned else log.warning)(message, *args)
        self._warned = True

    def close(self) -> None:
        """Close the pipe: the guardian kills what is still registered (nothing, if every
        child was released) and exits; wait briefly for that."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._write_fd is not None:
                os.close(self._write_fd)
                self._write_fd = None
            process, self._process = self._process, None
        if process is not None:
            try:
                process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - subprocess reaps it later
                pass


# -- the guardian process ---------------------------------------------------------------------
def _kill_groups(groups: Iterable[int]) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass  # ESRCH: already gone; EPERM: no member we may signal (a setuid program)


def _serve(initial: Iterable[int]) -> None:
    groups = set(initial)
    pending = b""
    while True:
        try:
            data = os.read(0, 65536)
        except InterruptedError:  # pragma: no cover - retried by os.read itself (PEP 475)
            continue
        except OSError:
            data = b""
        if not data:  # the server is gone
            _kill_groups(groups)
            return
        lines = (pending + data).split(b"\n")
        pending = lines.pop()
        for line in lines:
            try:
                op, pgid = line[:1], int(line[1:])
            except ValueError:
                continue  # not ours to judge: the server writes only the two forms
            if op == b"+":
                groups.add(pgid)
            elif op == b"-":
                groups.discard(pgid)


if __name__ == "__main__":
    # In its own session (no terminal signals); stdin is the pipe.
    _serve(int(arg) for arg in sys.argv[1:])
