"""The process-group guardian (POSIX): no child outlives a server that was SIGKILLed.

Each child runs in its own session and process group (``start_new_session``), so that
``killpg`` reaches everything it started. The server kills those groups on every way out it
sees (DES3) — but a SIGKILL, or a hard crash, gives it no way out at all, and the groups live
on. So each loop that spawns children starts one small guardian process:

- It is started with its stdin on one end of a ``SOCK_SEQPACKET`` socket pair whose other end
  only the server holds (close-on-exec, and children are started with ``close_fds``). When the
  server is gone, however it died, the kernel closes that end and the guardian reads EOF.
- The server tells it ``+PGID`` when a child (the leader of group PGID) was started, and
  ``-PGID`` once that group was killed (SIGKILL to a group is delivered to every member at
  once: the group is doomed) and *before* the child is reaped. Until the reap, the child —
  alive or a zombie — keeps its pid, and so the group id, ours; and POSIX reuses no pid while
  a process group of that id has members. So the guardian only ever holds groups that are ours.
- A child whose stdio is the connection itself (execsession.socket_stdio) is not cut off by
  the server's death as a relayed child is (its pipes close): so the server hands the guardian
  a copy of that socket (``S`` with the fd, ``SCM_RIGHTS``) before the child is started, and
  ``s`` once the session no longer needs it.
- At EOF it shuts down every socket it holds (both ways: the child reads EOF, its writes fail)
  and sends SIGKILL to every group still registered, then exits. One signal, not SIGTERM
  then SIGKILL after a grace: the server itself kills with SIGKILL, and a grace would let a
  group empty itself and its id be reused before the second signal.

The one window left: after the server died, init reaps a zombie leader whose group has no
other member, before the guardian's ``killpg``; the id could be reused only after the kernel's
cyclic pid allocator went round all of ``pid_max`` in those microseconds.

And one window at the start: a child runs from the moment the spawner thread's
``posix_spawnp`` returns (:mod:`execsession.posix_spawn`) until that thread, holding the GIL
again, has written ``+PGID`` — microseconds, up to the interpreter's 5 ms switch interval when
the loop's thread is busy. A SIGKILL in that window leaves that one child (its stdin pipe then
closes, so a child that reads its input ends by itself; a child on the socket itself has its
connection cut by the guardian, which held the socket before the spawn). The loop relays a
child's output only after the registration, so no client of a relayed child ever sees an
unguarded one; a child on the socket may speak before its registration (microseconds after
its start, or up to the switch interval), which is why the guardian holds its socket.

Messages are a few bytes, one datagram each, sent non-blocking: the server never waits for
the guardian. A send that fails (the guardian died: EPIPE; it stopped reading: EAGAIN) makes
the server log it (a warning the first time), kill what is left of that guardian and start a
new one, handing it the current groups on its command line and the held sockets as its first
messages; if none can be started, the server keeps serving unguarded and tries again at the
next child.

Why not the alternatives: ``PR_SET_PDEATHSIG`` (Linux only) needs Python code between fork
and exec (``preexec_fn``, unsafe with threads), reaches the child only, not what it started
in its group, and fires when the *thread* that forked exits, not the process. A gate keeping a
socket child from running until its registration (``/bin/sh`` reading a line from an extra fd
before it ``exec``'s the command) closed the window too, but cost ~0.5 ms of start-up per
child: 1,000 sessions 1.70 s against 1.14 s without it (ACTIVE_KB SB6).
``PR_SET_CHILD_SUBREAPER`` on the server makes orphans its own children — useless once the
server itself is dead. The guardian costs one process per loop (started with the first
child, so a loop that spawns nothing has none) and two small messages per session (four with
the socket as the child's stdio).

This module is also the guardian's program: it is run by path (``python -I -S
posix_guardian.py PGID...``), so it imports nothing but the standard library.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - Windows children die with their job object
    raise ImportError("execsession.posix_guardian needs POSIX process groups")

import array
import logging
import os
import resource
import signal
import socket
import subprocess
import threading
from collections.abc import Iterable

__all__ = ["GroupGuardian"]

log = logging.getLogger("execsession.guardian")


class GroupGuardian:
    """The server's side: the groups to guard, the sockets to cut, and the channel to the
    guardian process.

    Thread-safe: a spawner thread registers its child the moment it started (so no SIGKILL
    of the server between the spawn and the loop's hand-over leaves it unguarded), the loop's
    thread releases groups and holds and releases sockets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._sockets: set[int] = set()
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._warned = False
        self._closed = False
        self.starts = 0
        """How many guardian processes were started (a restart after a failure counts)."""

    @property
    def groups(self) -> int:
        """How many process groups are registered (children started, not yet released)."""
        return len(self._groups)

    @property
    def sockets(self) -> int:
        """How many sockets the guardian holds (a child's stdio, not yet released)."""
        return len(self._sockets)

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
            if self._channel is None:
                self._start()

    def guard(self, pgid: int) -> None:
        """Register group ``pgid`` (a child just started, leading its own group)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the guardian is closed")
            self._groups.add(pgid)
            self._send(b"+%d" % pgid)

    def release(self, pgid: int) -> None:
        """Forget group ``pgid``: it was killed (or is known empty), and its leader is not
        reaped yet. Call it before reaping, so the guardian never holds a reusable id."""
        with self._lock:
            if pgid not in self._groups:
                return
            self._groups.discard(pgid)
            if self._channel is not None:
                self._send(b"-%d" % pgid)

    def hold(self, fd: int) -> None:
        """Give the guardian a copy of socket ``fd`` (a child's stdio, before the child is
        started): if the server dies, the guardian shuts it down, so a child not registered
        yet loses its connection (as a relayed child loses its pipes). ``fd`` must stay open
        until :meth:`unhold`."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the guardian is closed")
            self._sockets.add(fd)
            self._send(b"S%d" % fd, fd)

    def unhold(self, fd: int) -> None:
        """The guardian closes its copy of ``fd`` (call it before ``fd`` is closed)."""
        with self._lock:
            if fd not in self._sockets:
                return
            self._sockets.discard(fd)
            if self._channel is not None:
                self._send(b"s%d" % fd)

    def _send(self, message: bytes, fd: int | None = None) -> None:
        if self._channel is None:
            self._start()  # hands it every registered group and held socket, this one included
            return
        try:
            self._sendmsg(self._channel, message, fd)
        except OSError as error:  # EPIPE: it died; EAGAIN: it stopped reading
            self._lost(error)
            self._start()

    @staticmethod
    def _sendmsg(channel: socket.socket, message: bytes, fd: int | None) -> None:
        # One datagram per message (SOCK_SEQPACKET): a socket's copy travels with its own.
        rights = [] if fd is None else [
            (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        channel.sendmsg([message], rights)

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # close-on-exec
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__),
                 *map(str, sorted(self._groups))],
                stdin=theirs.fileno(), stdout=subprocess.DEVNULL, close_fds=True,
                start_new_session=True, cwd="/")
        except Exception as error:  # no python to run, no fds left...: serve unguarded
            ours.close()
            self._warn("cannot start the process-group guardian (%s): a SIGKILLed server "
                       "would leave its children running", error)
            return
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._channel = ours
        self.starts += 1
        for fd in sorted(self._sockets):  # a replacement gets the sockets its predecessor had
            try:
                self._sendmsg(ours, b"S%d" % fd, fd)
            except OSError as error:
                self._warn("cannot hand socket %d to the guardian: %s", fd, error)

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
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _warn(self, message: str, *args: object) -> None:
        (log.debug if self._warned else log.warning)(message, *args)
        self._warned = True

    def close(self) -> None:
        """Close the channel: the guardian kills what is still registered (nothing, if every
        child was released), shuts down what it still holds, and exits; wait briefly."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._channel is not None:
                self._channel.close()
                self._channel = None
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


def _cut(sockets: Iterable[int]) -> None:
    for fd in sockets:
        try:
            with socket.socket(fileno=fd) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # ENOTCONN: that connection had ended already


def _serve(initial: Iterable[int]) -> None:
    try:  # a copy of every live session's socket may be held here
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        pass
    channel = socket.socket(fileno=0)
    groups = set(initial)
    sockets: dict[int, int] = {}  # the server's fd number -> our copy
    space = socket.CMSG_SPACE(array.array("i").itemsize * 4)
    while True:
        try:
            data, ancillary, _, _ = channel.recvmsg(64, space, socket.MSG_CMSG_CLOEXEC)
        except InterruptedError:  # pragma: no cover - retried by recvmsg itself (PEP 475)
            continue
        except OSError:
            data, ancillary = b"", []
        received = [fd for level, kind, payload in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                    for fd in array.array("i", payload[:len(payload) - len(payload) % 4])]
        if not data:  # the server is gone: cut the connections, kill the groups
            _cut(sockets.values())
            _kill_groups(groups)
            return
        try:
            op, number = data[:1], int(data[1:])
        except ValueError:
            op, number = b"", 0  # not ours to judge: the server writes only these forms
        if op == b"+":
            groups.add(number)
        elif op == b"-":
            groups.discard(number)
        elif op == b"S" and received:
            old = sockets.pop(number, None)
            if old is not None:
                os.close(old)
            sockets[number] = received.pop(0)
        elif op == b"s":
            old = sockets.pop(number, None)
            if old is not None:
                os.close(old)
        for fd in received:  # more than asked for
            os.close(fd)


if __name__ == "__main__":
    # In its own session (no terminal signals); stdin is the channel.
    _serve(int(arg) for arg in sys.argv[1:])
