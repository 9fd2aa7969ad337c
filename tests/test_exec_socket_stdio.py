"""The connection itself as the child's stdio (execsession.socket_stdio): ``stdio=socket``, and
``auto`` choosing it or the relay. Real children on loopback; the selectors loop on Linux has
it (``posix`` tests), the IOCP loop refuses it (the last test runs in the Wine legs too)."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from execsession import (
    ConfigError,
    ExecServer,
    ExecSession,
    ExecSessionConfig,
    SocketStdioSession,
    StderrMode,
    StdioMode,
    open_loop,
    open_session,
)
from tests.exec_support import (
    ECHO_CODE,
    NATIVE_CAT,
    ON_WINDOWS,
    WAIT,
    ServerThread,
    connect,
    exchange,
    open_resources,
    pattern,
    process_alive,
    python_child,
    recv_all,
    wait_dead,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
posix = pytest.mark.posix

# The child says what its stdio is (a socket? blocking?), then echoes.
REPORT_THEN_ECHO = (
    "import os, stat, sys\n"
    "kinds = ['socket' if stat.S_ISSOCK(os.fstat(fd).st_mode) else 'other' for fd in (0, 1, 2)]\n"
    "os.write(1, (' '.join(kinds) + ' ' + str(os.get_blocking(0)) + '\\n').encode())\n"
    + ECHO_CODE
)
# A grandchild that sleeps, its pid and ours printed; then the child sleeps without touching its
# stdio (only a hang-up watch can see the client go).
TREE_THEN_SLEEP = (
    "import os, subprocess, sys, time\n"
    "grandchild = subprocess.Popen([sys.executable, '-S', '-c', 'import time; time.sleep(120)'])\n"
    "os.write(1, f'{grandchild.pid} {os.getpid()}\\n'.encode())\n"
    "time.sleep(120)\n"
)
ABORT_LINGER = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)
"""SO_LINGER on, 0 seconds: close() resets the connection."""


def _read_line(sock: socket.socket) -> bytes:
    line = bytearray()
    while not line.endswith(b"\n"):
        data = sock.recv(1)
        assert data, f"EOF before a whole line: {bytes(line)!r}"
        line += data
    return bytes(line)


@posix
def test_auto_gives_the_child_the_connection_itself_and_counts_its_bytes() -> None:
    with ServerThread(python_child(REPORT_THEN_ECHO), stdio=StdioMode.AUTO) as server:
        assert server.server.socket_stdio
        with connect(server.address) as sock:
            server.wait_sessions(1)
            [session] = server.server.sessions
            assert isinstance(session, SocketStdioSession)
            # stdin, stdout and (merge) stderr are the socket, in blocking mode
            assert _read_line(sock) == b"socket socket socket True\n"
            sock.sendall(b"hello\n")
            assert sock.recv(100) == b"hello\n"
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b""
        [result] = server.wait_results(1)
    assert (result.reason, result.returncode) == ("exited", 0)
    # TCP_INFO's payload counts, the FIN not counted as a byte
    assert result.bytes_from_client == len(b"hello\n")
    assert result.bytes_to_client == len(b"socket socket socket True\n") + len(b"hello\n")
    assert (result.pauses, result.peak_buffered) == (0, 0)


@posix
def test_bytes_pass_exactly_under_random_chunking_through_a_native_cat() -> None:
    """64 MiB each way through cat, sent in random chunks from a thread while the answer is
    read: nothing lost, reordered or duplicated; several sessions at once."""
    size = 64 * 1024 * 1024
    data = pattern(1024 * 1024) * (size // (1024 * 1024))
    expected = hashlib.sha256(data).hexdigest()
    with ServerThread(NATIVE_CAT, stdio=StdioMode.SOCKET) as server:
        def one(seed: int, out: list[str]) -> None:
            with connect(server.address) as sock:
                chooser = random.Random(seed)

                def send() -> None:
                    view = memoryview(data)
                    while view:
                        step = chooser.randint(1, 300_000)
                        sock.sendall(view[:step])
                        view = view[step:]
                    sock.shutdown(socket.SHUT_WR)

                sender = threading.Thread(target=send, daemon=True)
                sender.start()
                digest = hashlib.sha256()
                received = 0
                while True:
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        break
                    digest.update(chunk)
                    received += len(chunk)
                sender.join(WAIT)
                out.append(f"{received} {digest.hexdigest()}")

        outputs: list[str] = []
        threads = [threading.Thread(target=one, args=(seed, outputs)) for seed in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT * 3)
        results = server.wait_results(3)
    assert outputs == [f"{size} {expected}"] * 3
    assert [(r.reason, r.returncode) for r in results] == [("exited", 0)] * 3
    assert [(r.bytes_from_client, r.bytes_to_client) for r in results] == [(size, size)] * 3


@posix
@pytest.mark.parametrize("option", [{"stderr": "separate"}, {"idle_timeout": 30.0},
                                    {"connect_timeout": 30.0}])
def test_auto_relays_when_an_option_needs_the_bytes_and_socket_refuses_it(
        option: dict[str, Any]) -> None:
    config = ExecSessionConfig(**option)
    assert config.needs_relay is not None
    with open_loop() as loop:
        server = ExecServer(loop, ("127.0.0.1", 0), ["cat"], config=config)
        try:
            assert not server.socket_stdio
        finally:
            server.close()
        left, right = socket.socketpair()
        with right:
            session = open_session(left, ["cat"], loop=loop, config=config)
            assert isinstance(session, ExecSession)
            session.close()
    with pytest.raises(ConfigError) as raised:
        ExecSessionConfig(stdio=StdioMode.SOCKET, **option)
    assert raised.value.field == "stdio" and config.needs_relay in str(raised.value)


def test_a_bad_stdio_value_is_named() -> None:
    with pytest.raises(ConfigError) as raised:
        ExecSessionConfig(stdio="sockets")  # type: ignore[arg-type]
    assert raised.value.field == "stdio" and "'sockets'" in str(raised.value)
    assert ExecSessionConfig(stdio="pipes").stdio is StdioMode.PIPES  # type: ignore[arg-type]


@posix
def test_stderr_merges_in_order_or_is_dropped() -> None:
    code = ("import os\n"
            "for i in range(50):\n"
            "    os.write(1 + i % 2, b'%d\\n' % i)\n")
    with ServerThread(python_child(code), stdio=StdioMode.SOCKET) as server:
        assert exchange(server.address) == b"".join(b"%d\n" % i for i in range(50))
    config = ExecSessionConfig(stderr=StderrMode.DISCARD, stdio=StdioMode.SOCKET)
    with ServerThread(python_child(code), config=config) as server:
        assert exchange(server.address) == b"".join(b"%d\n" % i for i in range(0, 50, 2))


@posix
def test_a_client_reset_kills_a_child_that_never_touches_its_stdio() -> None:
    """The child sleeps without reading: only the hang-up watch sees the client go. The session
    ends as client-disconnected and the child's whole tree is killed."""
    with ServerThread(python_child(TREE_THEN_SLEEP), stdio=StdioMode.SOCKET) as server:
        with connect(server.address) as sock:
            grandchild, child = (int(word) for word in _read_line(sock).split())
            assert process_alive(grandchild) and process_alive(child)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT_LINGER)
        [result] = server.wait_results(1)
    assert result.reason == "client-disconnected"
    assert wait_dead(child) and wait_dead(grandchild)


@posix
def test_the_child_exit_ends_the_connection_and_kills_what_it_left() -> None:
    """A backgrounded sleep still holds the socket: the session ends with the child anyway (the
    client sees EOF at once, not after 120 s) and the sleep is killed."""
    command = "sleep 120 & echo $!"
    with ServerThread(command, shell=True, stdio=StdioMode.SOCKET) as server:
        started = time.monotonic()
        output = exchange(server.address, half_close=False)
        [result] = server.wait_results(1)
    assert time.monotonic() - started < WAIT / 2
    assert (result.reason, result.returncode) == ("exited", 0)
    assert wait_dead(int(output))


@posix
def test_exec_timeout_and_spawn_failure_end_the_session_with_their_reason() -> None:
    config = ExecSessionConfig(exec_timeout=0.5, stdio=StdioMode.SOCKET)
    with ServerThread(python_child(TREE_THEN_SLEEP), config=config) as server:
        with connect(server.address) as sock:
            grandchild, child = (int(word) for word in _read_line(sock).split())
            assert recv_all(sock) == b""  # the connection ends with the timeout
        [result] = server.wait_results(1)
    assert result.reason == "exec-timeout"
    assert wait_dead(child) and wait_dead(grandchild)
    with ServerThread(["/nonexistent/program"], stdio=StdioMode.SOCKET) as server:
        assert exchange(server.address, b"lost\n") == b""
        [result] = server.wait_results(1)
    assert result.reason == "spawn-failed" and result.returncode is None
    assert result.error is not None and "nonexistent" in result.error


@posix
def test_no_fd_or_process_is_left_behind_on_any_path() -> None:
    """Normal ends, resets, spawn failures, a server shut down with sessions running: this
    process holds as many fds afterwards as before."""
    def cycle() -> None:
        with ServerThread(NATIVE_CAT, stdio=StdioMode.SOCKET) as server:
            for _ in range(5):
                assert exchange(server.address, b"x\n") == b"x\n"
            with connect(server.address) as sock:
                sock.sendall(b"y\n")
                assert sock.recv(10) == b"y\n"
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT_LINGER)
            server.wait_results(6)
            running = [connect(server.address) for _ in range(3)]
            server.wait_sessions(3)
        for sock in running:  # the server shut down with these running
            assert recv_all(sock) == b""
            sock.close()
        assert len(server.results) == 9
        with ServerThread(["/nonexistent/program"], stdio=StdioMode.SOCKET) as server:
            exchange(server.address)
            server.wait_results(1)

    cycle()  # warm up (spawner threads, guardian, lazily opened files)
    before = open_resources()
    cycle()
    assert open_resources() == before


@posix
def test_socket_is_refused_where_the_loop_or_the_socket_cannot() -> None:
    with open_loop() as loop:
        left, right = socket.socketpair()  # not TCP
        with left, right:
            with pytest.raises(ValueError, match="TCP"):
                SocketStdioSession(left, ["cat"], loop=loop)
        loop.SOCKET_STDIO = False  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="stdio=socket: the selectors loop"):
            ExecServer(loop, ("127.0.0.1", 0), ["cat"],
                       config=ExecSessionConfig(stdio=StdioMode.SOCKET))
        server = ExecServer(loop, ("127.0.0.1", 0), ["cat"])  # auto: the relay then
        assert not server.socket_stdio
        server.close()


def test_the_iocp_loop_refuses_socket_and_relays_on_auto() -> None:
    """On Windows (the Wine legs) stdio=socket is refused with the reason, auto relays; on Linux
    the selectors loop takes both."""
    with open_loop() as loop:
        config = ExecSessionConfig(stdio=StdioMode.SOCKET)
        if ON_WINDOWS:
            with pytest.raises(ValueError, match="stdio=socket: the iocp loop"):
                ExecServer(loop, ("127.0.0.1", 0), NATIVE_CAT, config=config)
            server = ExecServer(loop, ("127.0.0.1", 0), NATIVE_CAT)
            assert not server.socket_stdio
        else:
            server = ExecServer(loop, ("127.0.0.1", 0), NATIVE_CAT, config=config)
            assert server.socket_stdio
        server.close()


@posix
def test_the_command_line_chooses_by_its_options() -> None:
    """ntafd-exec: auto gives the socket; a relay's option (--buffer) relays; --stdio socket
    with --idle-timeout is an error that names both."""
    def start(*args: str) -> tuple[subprocess.Popen[bytes], int]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        server = subprocess.Popen([sys.executable, "-m", "execsession", "-v", "-l", str(port),
                                   *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, cwd=ROOT)
        return server, port

    for options, expected in (((), b"the connection as the process's stdio"),
                              (("--buffer", "64k"), b"relayed through pipes"),
                              (("--stdio", "pipes"), b"relayed through pipes")):
        server, port = start(*options, "-e", "cat")
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            assert b"listening on" in line and expected in line, line
            assert exchange(("127.0.0.1", port), b"abc\n") == b"abc\n"
            assert server.wait(WAIT) == 0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(WAIT)
            if server.stdout is not None:
                server.stdout.close()
    done = subprocess.run([sys.executable, "-m", "execsession", "-l", "0", "--stdio", "socket",
                           "--idle-timeout", "5", "-e", "cat"], capture_output=True,
                          timeout=WAIT, cwd=ROOT, check=False)
    assert done.returncode == 2
    assert b"stdio" in done.stderr and b"idle_timeout" in done.stderr



@posix
def test_the_guardian_cuts_the_sockets_it_holds_when_the_server_is_gone() -> None:
    """GroupGuardian.hold: the guardian keeps a copy of a child's socket; when the server is
    gone (its channel's EOF: close() here) it shuts each one down — the client sees EOF although
    this process still holds the socket open — and leaves a released one alone."""
    if sys.platform == "win32":  # pragma: no cover - a posix test; this tells mypy
        raise AssertionError("posix only")
    from execsession.posix_guardian import GroupGuardian

    with socket.create_server(("127.0.0.1", 0)) as listener:
        pairs = []
        for _ in range(2):
            client = socket.create_connection(listener.getsockname(), timeout=WAIT)
            server_side, _ = listener.accept()
            pairs.append((client, server_side))
    (held_client, held), (released_client, released) = pairs
    guardian = GroupGuardian()
    try:
        guardian.hold(held.fileno())
        guardian.hold(released.fileno())
        assert guardian.sockets == 2 and guardian.starts == 1
        guardian.unhold(released.fileno())
        assert guardian.sockets == 1
        guardian.close()  # EOF: as when the server dies
        assert held_client.recv(10) == b""  # cut, though `held` is still open here
        with pytest.raises(OSError):
            held.send(b"x")  # shut both ways
        released.sendall(b"alive\n")
        assert released_client.recv(10) == b"alive\n"
    finally:
        for client, server_side in pairs:
            client.close()
            server_side.close()


@posix
def test_a_replacement_guardian_gets_the_sockets_its_predecessor_held() -> None:
    if sys.platform == "win32":  # pragma: no cover - a posix test; this tells mypy
        raise AssertionError("posix only")
    import signal

    from execsession.posix_guardian import GroupGuardian

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=WAIT)
        server_side, _ = listener.accept()
    guardian = GroupGuardian()
    try:
        guardian.hold(server_side.fileno())
        first = guardian.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert wait_dead(first)
        # The next message finds it gone (EPIPE) and starts another, which gets the socket.
        guardian.guard(os.getpid() + 10_000_000)  # an id no group has: harmless to "kill"
        assert guardian.starts == 2 and guardian.pid != first
        guardian.close()
        assert client.recv(10) == b""
    finally:
        client.close()
        server_side.close()
