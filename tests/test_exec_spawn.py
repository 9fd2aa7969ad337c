"""The POSIX backend's spawning off the loop's thread (execsession.posix_spawn): many children
started at once, a failing spawn among good ones, shutdown with spawns in flight, and the
glibc path itself (stdio, a new session, signals back to their defaults, nothing inherited)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import pytest

from execsession import ExecSession, SessionResult, open_loop
from tests.exec_support import (
    WAIT,
    ServerThread,
    connect,
    open_resources,
    pattern,
    process_alive,
    recv_all,
    wait_dead,
)

pytestmark = pytest.mark.posix


def _spawner_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "execsession-spawner"]


def _wait_no_spawner_threads() -> bool:
    deadline = time.monotonic() + WAIT
    while _spawner_threads():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _slow_spawns(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make every spawn take 0.3 s more (so that a test can act while spawns are under way);
    returns the list the pids of the children that did start are appended to."""
    started: list[int] = []
    if sys.platform == "win32":  # pragma: no cover - a posix helper; this tells mypy
        return started
    from execsession import posix_spawn

    real_spawn = posix_spawn.spawn

    def slow_spawn(*args: Any, **kwargs: Any) -> posix_spawn.Process:
        time.sleep(0.3)
        process = real_spawn(*args, **kwargs)
        started.append(process.pid)
        return process

    monkeypatch.setattr(posix_spawn, "spawn", slow_spawn)
    return started


def test_many_sessions_spawned_at_once_are_byte_exact() -> None:
    """40 clients connect at once, each sends its own 200 KiB and half-closes: every child
    is started on the spawner threads while the loop relays the others; every echo is
    byte-exact (hash), every session ends ``exited`` with code 0."""
    count = 40
    with ServerThread(["cat"], max_conns=0) as server:
        payloads = [pattern(200_000 + index) [::-1] + b"%d" % index for index in range(count)]
        digests: list[str | None] = [None] * count

        def client(index: int) -> None:
            with connect(server.address) as sock:
                def send() -> None:
                    sock.sendall(payloads[index])
                    sock.shutdown(socket.SHUT_WR)
                sender = threading.Thread(target=send, daemon=True)
                sender.start()
                digests[index] = hashlib.sha256(recv_all(sock)).hexdigest()
                sender.join(WAIT)

        threads = [threading.Thread(target=client, args=(index,)) for index in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        results = server.wait_results(count)
    assert digests == [hashlib.sha256(payload).hexdigest() for payload in payloads]
    assert [(result.reason, result.returncode) for result in results] == [("exited", 0)] * count
    assert server.peak_sessions > 1
    assert _wait_no_spawner_threads()


def _session_pair(loop: Any, command: list[str], **kwargs: Any
                  ) -> tuple[socket.socket, ExecSession, list[SessionResult]]:
    client, conn = socket.socketpair()
    results: list[SessionResult] = []
    session = ExecSession(conn, command, loop=loop, on_done=results.append, **kwargs)
    return client, session, results


def test_a_spawn_that_fails_among_good_ones_ends_only_its_session(
        caplog: pytest.LogCaptureFixture) -> None:
    """Six sessions on one loop, started together: a missing program and a missing working
    directory fail on the spawner thread — their sessions end ``spawn-failed`` with the
    reason logged and their connections closed — while the four others relay byte-exact."""
    before = open_resources()
    with open_loop() as loop:
        good = [_session_pair(loop, ["cat"]) for _ in range(4)]
        missing = _session_pair(loop, ["/nonexistent/ntafd-program"])
        bad_cwd = _session_pair(loop, ["cat"], cwd="/nonexistent/ntafd-directory")
        pairs = [*good[:2], missing, bad_cwd, *good[2:]]
        for _, session, _ in pairs:
            session.start()
        for index, (client, _, _) in enumerate(good):
            client.sendall(b"hello %d\n" % index * 1000)
            client.shutdown(socket.SHUT_WR)
        assert loop.run(until=lambda: all(session.done for _, session, _ in pairs),
                        timeout=WAIT)
        for index, (client, _, results) in enumerate(good):
            client.settimeout(WAIT)
            assert recv_all(client) == b"hello %d\n" % index * 1000
            assert [(result.reason, result.returncode) for result in results] == [("exited", 0)]
        for client, _, results in (missing, bad_cwd):
            [result] = results
            assert result.reason == "spawn-failed" and result.returncode is None
            assert result.error is not None and "FileNotFoundError" in result.error
            client.settimeout(WAIT)
            assert recv_all(client) == b""  # closed, nothing sent
        assert "ntafd-program" in caplog.text and "ntafd-directory" in caplog.text
        for client, _, _ in pairs:
            client.close()
    assert _wait_no_spawner_threads()
    assert open_resources() <= before


def test_shutdown_with_spawns_in_flight_leaves_no_child_and_no_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawns slowed to 0.3 s each; twice as many sessions as the loop has spawner threads
    start, then they are closed (as a server shutdown does) and the loop too while half the
    spawns run and half are queued: a queued one whose session closes never starts, a
    running one is waited for and its child killed and reaped; no spawner thread is left, no
    fd is leaked, and every session reports ``server-shutdown``."""
    if sys.platform == "win32":  # pragma: no cover - a posix test; this tells mypy
        return
    from execsession.posix_backend import SelectorLoop

    started = _slow_spawns(monkeypatch)
    before = open_resources()
    loop = open_loop()
    try:
        threads = SelectorLoop.SPAWNER_THREADS
        pairs = [_session_pair(loop, ["sleep", "300"]) for _ in range(2 * threads)]
        for _, session, _ in pairs:
            session.start()
        time.sleep(0.1)  # one spawn under way per thread, as many queued
        assert len(_spawner_threads()) == threads
        for _, session, _ in pairs:
            session.close()
    finally:
        loop.close()
    # Each close waits for its own spawn if under way, while the other thread may start the
    # next queued one: how many started varies; what matters is that none is left.
    assert started
    for pid in started:
        assert wait_dead(pid), f"child {pid} outlived the shutdown"
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped, not a zombie left behind
    assert [results[0].reason for _, _, results in pairs] == ["server-shutdown"] * len(pairs)
    assert not _spawner_threads()
    for client, _, _ in pairs:
        client.close()
    assert open_resources() <= before


def test_a_kill_before_the_spawn_finished_kills_the_child_when_it_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """abort() while the spawn is still under way: the kill is remembered, done the moment the
    child exists, and the session ends ``aborted`` once that child is reaped."""
    if sys.platform == "win32":  # pragma: no cover - a posix test; this tells mypy
        return

    started = _slow_spawns(monkeypatch)
    with open_loop() as loop:
        client, session, results = _session_pair(loop, ["sleep", "300"])
        session.start()
        assert session.pid is None
        session.abort()
        assert loop.run(until=lambda: session.done, timeout=WAIT)
        client.close()
    [pid] = started
    assert wait_dead(pid)
    [result] = results
    assert result.reason == "aborted" and result.returncode == -signal.SIGKILL


def test_the_glibc_spawn_gives_the_child_what_the_backend_needs() -> None:
    """The child of :func:`posix_spawn.spawn`: stdio on the given fds, stderr on /dev/null when
    asked, leader of a new session, SIGPIPE back to its default, an empty signal mask, and no
    descriptor beyond 0-2 — not even one made inheritable."""
    if sys.platform == "win32":  # pragma: no cover - a posix test; this tells mypy
        return
    from execsession import posix_spawn

    if posix_spawn._LIBC is None:  # pragma: no cover - not glibc: the Popen fallback runs
        pytest.skip("not glibc >= 2.34: spawn() uses subprocess.Popen here")
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    leaked_r, leaked_w = os.pipe()
    os.set_inheritable(leaked_w, True)
    # The signal lines first, read by the shell's builtins: dash blocks every signal around
    # each fork (and a grep of /proc/$$/status then raced it: SigBlk all ones, once in ten).
    script = ("while read -r key value; do case $key in SigBlk:|SigIgn:) echo $key $value;; "
              "esac; done < /proc/$$/status; "
              "ls /proc/self/fd; ps -o sid= -o pgid= -p $$; readlink /proc/self/fd/2")
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    try:
        process = posix_spawn.spawn(script, shell=True, stdin=stdin_r, stdout=stdout_w,
                                    stderr=None, cwd="/")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for fd in (stdin_r, stdout_w, leaked_w):
            os.close(fd)
    os.close(stdin_w)
    with os.fdopen(stdout_r, "rb") as output:
        lines = output.read().decode().split()
    assert process.wait(WAIT) == 0
    os.close(leaked_r)
    blocked = int(lines[lines.index("SigBlk:") + 1], 16)
    ignored = int(lines[lines.index("SigIgn:") + 1], 16)
    lines = lines[4:]
    fds = lines[:lines.index(str(process.pid))]
    assert set(fds) <= {"0", "1", "2", "3"}  # 3: ls's own directory
    sid, pgid = lines[len(fds):len(fds) + 2]
    assert sid == pgid == str(process.pid)
    assert blocked == 0
    assert not ignored & (1 << (signal.SIGPIPE - 1))
    assert lines[-1] == "/dev/null"
    assert not process_alive(process.pid)
    # What a C string would cut short is refused, not spawned truncated.
    read_fd, write_fd = os.pipe()
    try:
        with pytest.raises(ValueError, match="null byte"):
            posix_spawn.spawn(["echo", "a\0b"], shell=False, stdin=read_fd, stdout=write_fd,
                              stderr=None)
        with pytest.raises(ValueError, match="'=' in an environment"):
            posix_spawn.spawn(["true"], shell=False, stdin=read_fd, stdout=write_fd,
                              stderr=None, env={"A=B": "1", "PATH": os.environ.get("PATH", "")})
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_closing_the_spawner_cancels_what_is_queued_and_joins_its_threads() -> None:
    """Spawner.close() (what the loop's close does): the jobs still queued never run and are
    marked cancelled (no ``done`` call), the running ones finish, every thread is joined."""
    if sys.platform == "win32":  # pragma: no cover - a posix test; this tells mypy
        return
    from execsession import posix_spawn

    ran: list[int] = []
    done: list[int] = []
    release = threading.Event()

    def start(index: int) -> posix_spawn.Process:
        ran.append(index)
        release.wait(WAIT)
        return posix_spawn.Process(-1)

    def job_for(index: int) -> posix_spawn.SpawnJob:
        return posix_spawn.SpawnJob(lambda: start(index), lambda job: done.append(index))

    spawner = posix_spawn.Spawner(max_threads=2)
    jobs = [job_for(index) for index in range(6)]
    for job in jobs:
        spawner.submit(job)
    deadline = time.monotonic() + WAIT
    while len(ran) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    closer = threading.Thread(target=spawner.close)
    closer.start()
    time.sleep(0.1)
    release.set()
    closer.join(WAIT)
    assert not closer.is_alive() and spawner.threads == 0
    assert sorted(ran) == [0, 1] and sorted(done) == [0, 1]
    assert [job.state for job in jobs] == ["done"] * 2 + ["cancelled"] * 4
    with pytest.raises(RuntimeError, match="closed"):
        spawner.submit(posix_spawn.SpawnJob(lambda: posix_spawn.Process(-1), lambda job: None))
