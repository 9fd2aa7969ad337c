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
    "while True:\n"
    "    data = os.read(0, 65536)\n"
    "    if not data:\n"
    "        break\n"
    "    while data:\n"
    "        data = data[os.write(1, data):]\n"
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
def test_a_gated_child_runs_only_once_its_gate_opens_and_never_at_eof() -> None:
    """posix_spawn's gate: nothing of the command runs before the gate's line (its output pipe
    stays empty), all of it after; a gate closed unopened makes it exit 125 having run
    nothing; a missing program is raised at the spawn, as without a gate."""
    import select

    from execsession import posix_spawn

    if sys.platform == "win32":  # pragma: no cover - a posix test; this tells mypy
        raise AssertionError("posix only")
    for shell, command in ((False, ["sh", "-c", "echo ran"]), (True, "echo ran")):
        for opened in (True, False):
            gate_read, gate_write = os.pipe()
            out_read, out_write = os.pipe()
            null = os.open(os.devnull, os.O_RDWR)
            try:
                process = posix_spawn.spawn(command, shell=shell, stdin=null, stdout=out_write,
                                            stderr=None, gate=gate_read)
                os.close(gate_read)
                os.close(out_write)
                # The child exists, and holds still at the gate.
                assert select.select([out_read], [], [], 0.3)[0] == []
                assert process.poll() is None
                if opened:
                    os.write(gate_write, b"\n")
                os.close(gate_write)
                assert process.wait(WAIT) == (0 if opened else 125)
                assert os.read(out_read, 100) == (b"ran\n" if opened else b"")
            finally:
                for fd in (out_read, null):
                    os.close(fd)
    gate_read, gate_write = os.pipe()
    try:
        with pytest.raises(FileNotFoundError):
            posix_spawn.spawn(["/nonexistent/program"], shell=False, stdin=gate_read,
                              stdout=gate_write, stderr=None, gate=gate_read)
        with pytest.raises(FileNotFoundError):
            posix_spawn.spawn(["no-such-program-anywhere"], shell=False, stdin=gate_read,
                              stdout=gate_write, stderr=None, gate=gate_read)
    finally:
        os.close(gate_read)
        os.close(gate_write)
