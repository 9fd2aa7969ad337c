"""The exec backend suite: the same tests run against the selectors backend (Linux leg) and the
IOCP backend (Wine leg), with real children and real sockets on 127.0.0.1."""

from __future__ import annotations

import errno
import gc
import hashlib
import selectors
import socket
import sys
import time
from typing import Any

import pytest

from execsession import ExecSession, ExecSessionConfig, StderrMode, open_loop
from execsession.server import AddressFilter
from tests.exec_support import (
    BACKEND,
    NATIVE_CAT,
    ON_WINDOWS,
    PYTHON_CAT,
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

NEWLINE = b"\r\n" if ON_WINDOWS else b"\n"


def test_backend_is_the_platforms() -> None:
    with open_loop() as loop:
        assert loop.backend == BACKEND


# -- relaying ----------------------------------------------------------------------------------
def test_echo_through_the_native_cat() -> None:
    message = b"hello\nworld\n"
    with ServerThread(NATIVE_CAT) as server:
        received = exchange(server.address, message)
        [result] = server.wait_results(1)
    assert received.replace(b"\r\n", b"\n") == message
    assert (result.reason, result.returncode) == ("exited", 0)
    assert result.bytes_from_client == len(message)


def test_echo_through_the_shell() -> None:
    with ServerThread("echo relayed", shell=True) as server:
        received = exchange(server.address)
        [result] = server.wait_results(1)
    assert received.strip() == b"relayed"
    assert result.returncode == 0


def test_echo_through_a_python_child() -> None:
    with ServerThread(PYTHON_CAT) as server:
        assert exchange(server.address, b"ping\n") == b"ping\n"
        [result] = server.wait_results(1)
    assert result.reason == "exited" and result.returncode == 0


def test_ten_mebibytes_of_output_keep_every_byte_in_order() -> None:
    size = 10 * 1024 * 1024
    code = (f"import sys, hashlib\nblock = hashlib.sha256(b'x').digest() * 4096\n"
            f"out = sys.stdout.buffer\nleft = {size}\n"
            "i = 0\n"
            "while left:\n"
            "    chunk = bytes([i & 255]) + block[1:min(left, len(block))]\n"
            "    out.write(chunk[:left]); left -= len(chunk[:left]); i += 1\n"
            "out.flush()\n")
    block = hashlib.sha256(b"x").digest() * 4096
    expected = bytearray()
    index = 0
    while len(expected) < size:
        expected += (bytes([index & 255]) + block[1:])[: size - len(expected)]
        index += 1
    with ServerThread(python_child(code)) as server:
        received = exchange(server.address)
        [result] = server.wait_results(1)
    assert len(received) == size
    assert hashlib.sha256(received).digest() == hashlib.sha256(expected).digest()
    assert result.bytes_to_client == size and result.returncode == 0


def test_stdin_is_transformed_and_returned_in_order() -> None:
    data = pattern(3 * 1024 * 1024)
    code = ("import os\nwhile True:\n    d = os.read(0, 65536)\n    if not d: break\n"
            "    d = bytes(255 - b for b in d)\n"
            "    while d: d = d[os.write(1, d):]\n")
    with ServerThread(python_child(code)) as server:
        received = exchange(server.address, data)
        [result] = server.wait_results(1)
    assert received == bytes(255 - b for b in data)
    assert result.bytes_from_client == len(data) == result.bytes_to_client


def test_tiny_buffers_force_partial_transfers_and_lose_nothing() -> None:
    # Buffers of a few bytes: every read and write is partial and flow control pauses and
    # resumes constantly; the bytes must still come back complete and in order.
    # Under Wine every call is a wineserver round trip: a smaller amount keeps it short.
    data = pattern(8_000 if ON_WINDOWS else 300_000)
    config = ExecSessionConfig(stdin_buffer=7, stdout_buffer=13, stderr_buffer=5,
                               max_buffered=19)
    with ServerThread(PYTHON_CAT, config=config) as server:
        received = exchange(server.address, data)
        [result] = server.wait_results(1)
    assert received == data
    assert result.peak_buffered <= config.max_buffered
    assert result.pauses > 0


def test_client_eof_closes_the_childs_stdin_after_draining() -> None:
    # The child reads to EOF and only then answers with the count: the answer proves that
    # stdin was closed, and only after every byte had been written.
    data = pattern(1024 * 1024 + 17)
    code = "import sys\nprint(len(sys.stdin.buffer.read()))"
    with ServerThread(python_child(code)) as server:
        received = exchange(server.address, data)
    assert received.strip() == str(len(data)).encode()


def test_a_child_that_stops_reading_early_still_gets_its_output_through() -> None:
    # The child reads one line and exits while the client is still sending: writes to its
    # stdin then fail (broken pipe); the rest of the input is dropped, the client is still read
    # (so its EOF is seen) and the child's answer and exit code come through.
    code = "import sys\nsys.stdout.buffer.write(sys.stdin.buffer.readline().upper())"
    data = b"hello\n" + pattern(2 * 1024 * 1024)
    with ServerThread(python_child(code)) as server:
        received = exchange(server.address, data)
        [result] = server.wait_results(1)
    assert received.replace(b"\r\n", b"\n") == b"HELLO\n"
    assert (result.reason, result.returncode) == ("exited", 0)


# -- stderr --------------------------------------------------------------------------------------
STDERR_CODE = ("import sys\nsys.stdout.write('out\\n'); sys.stdout.flush()\n"
               "sys.stderr.write('err\\n'); sys.stderr.flush()")


@pytest.mark.parametrize("mode", list(StderrMode))
def test_stderr_modes(mode: StderrMode) -> None:
    sink: list[bytes] = []
    config = ExecSessionConfig(stderr=mode)
    with ServerThread(python_child(STDERR_CODE), config=config,
                      stderr_sink=sink.append) as server:
        received = exchange(server.address).replace(b"\r\n", b"\n")
        [result] = server.wait_results(1)
    if mode is StderrMode.MERGE:
        assert received == b"out\nerr\n"  # one pipe: the order the child wrote in
        assert sink == []
    elif mode is StderrMode.SEPARATE:
        assert received == b"out\n"
        assert b"".join(sink).replace(b"\r\n", b"\n") == b"err\n"
        assert result.bytes_stderr == len(b"".join(sink))
    else:
        assert received == b"out\n"
        assert sink == []


# -- exit codes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [0, 3, 255])
def test_exit_code_is_reported(code: int) -> None:
    with ServerThread(python_child(f"import sys; sys.exit({code})")) as server:
        assert exchange(server.address) == b""
        [result] = server.wait_results(1)
    assert (result.reason, result.returncode) == ("exited", code)


def test_a_crashing_child_is_reported() -> None:
    with ServerThread(python_child("print('before', flush=True)\nimport os; os.abort()")) as server:
        received = exchange(server.address)
        [result] = server.wait_results(1)
    assert received.strip() == b"before"
    assert result.reason == "exited"
    assert result.returncode not in (None, 0)
    if not ON_WINDOWS:
        assert result.returncode == -6  # SIGABRT


def test_a_missing_program_fails_cleanly() -> None:
    with ServerThread(["/nonexistent/program-ntafd"]) as server:
        assert exchange(server.address) == b""
        [result] = server.wait_results(1)
    assert result.reason == "spawn-failed" and result.returncode is None
    assert result.error


# -- disconnects and the process tree -------------------------------------------------------------
TREE_CODE = (
    "import subprocess, sys, time\n"
    "grandchild = subprocess.Popen([sys.executable, '-S', '-c', 'import time; time.sleep(120)'])\n"
    "print(grandchild.pid, flush=True)\n"
    "block = b'x' * 65536\n"
    "while True:\n"
    "    sys.stdout.buffer.write(block)\n"
)


def _disconnect_mid_transfer() -> None:
    with ServerThread(python_child(TREE_CODE)) as server:
        with connect(server.address) as sock:
            line = b""
            while b"\n" not in line:
                line += sock.recv(1)
            grandchild = int(line)
            assert process_alive(grandchild)
            received = 0
            while received < 1024 * 1024:
                received += len(sock.recv(65536))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        [result] = server.wait_results(1)
        assert result.reason == "client-disconnected"
        assert wait_dead(grandchild), "the grandchild outlived the session"


def test_client_disconnect_mid_transfer_kills_the_tree() -> None:
    _disconnect_mid_transfer()


def _every_ending() -> None:
    """One session ending each way: normally, by a client reset, by a timeout, by a spawn
    failure, and a client refused (by the filter)."""
    _disconnect_mid_transfer()
    with ServerThread(PYTHON_CAT, config=ExecSessionConfig(idle_timeout=0.5)) as server:
        assert exchange(server.address, b"fine\n") == b"fine\n"
        with connect(server.address) as idle:
            results = server.wait_results(2)
            assert recv_all(idle) == b""
    assert [result.reason for result in results] == ["exited", "idle-timeout"]
    with ServerThread(["/nonexistent/program-ntafd"]) as server:
        exchange(server.address)
        server.wait_results(1)
    with ServerThread(PYTHON_CAT, address_filter=AddressFilter([], ["127.0.0.1"])) as server:
        assert exchange(server.address) == b""


def test_no_fd_handle_or_process_is_left_behind_on_any_path() -> None:
    # The first round may load DLLs, open the null device... Loops and sessions form reference
    # cycles, and on Windows every Python lock holds a semaphore handle (CPython 3.11's
    # emulated condition variables): collect them before counting. The pipes, sockets,
    # processes and jobs must be closed explicitly, so they do not depend on the collector.
    _every_ending()
    gc.collect()
    before = open_resources()
    _every_ending()
    _every_ending()
    gc.collect()
    assert open_resources() <= before  # nothing per session left behind


def test_abort_kills_a_child_that_ignores_its_input() -> None:
    with open_loop() as loop:
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname()[:2])
        conn, _ = listener.accept()
        listener.close()
        session = ExecSession(conn, python_child("import time; time.sleep(120)"), loop=loop)
        session.start()
        pid = session.pid
        assert pid is not None
        loop.call_later(0.2, session.abort)
        assert loop.run(until=lambda: session.done, timeout=WAIT)
        client.close()
    assert session.result is not None and session.result.reason == "aborted"
    assert wait_dead(pid)


# -- timeouts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["exec", "connect", "idle"])
def test_each_timeout_kills_the_child(kind: str) -> None:
    timeouts: dict[str, Any] = {f"{kind}_timeout": 1.0}
    config = ExecSessionConfig(**timeouts)
    with ServerThread(PYTHON_CAT, config=config) as server:
        with connect(server.address) as sock:
            if kind != "connect":
                sock.sendall(b"one\n")
                assert recv_all(sock, limit=4) == b"one\n"
            if kind == "exec":
                # keep the session busy: only the execution timeout can end it
                deadline = time.monotonic() + WAIT
                while not server.results and time.monotonic() < deadline:
                    try:
                        sock.sendall(b"more\n")
                        sock.recv(100)
                    except OSError:
                        break
                    time.sleep(0.05)
            [result] = server.wait_results(1)
            recv_all(sock)  # the server closed the connection: this ends
    assert result.reason == f"{kind}-timeout"


# -- flow control --------------------------------------------------------------------------------
def test_flow_control_engages_with_a_slow_reader_and_bounds_memory() -> None:
    size = 8 * 1024 * 1024
    code = f"import sys\nsys.stdout.buffer.write(b'z' * {size})\n"
    config = ExecSessionConfig()
    with ServerThread(python_child(code), config=config) as server:
        with connect(server.address, rcvbuf=16384) as sock:
            sock.shutdown(socket.SHUT_WR)
            time.sleep(0.5)  # let every buffer between the child and us fill up
            got = 0
            while True:
                data = sock.recv(4096)
                if not data:
                    break
                got += len(data)
        [result] = server.wait_results(1)
    assert got == size
    assert result.pauses >= 1, "the stdout buffer never paused its reader"
    assert 0 < result.peak_buffered <= config.max_buffered


def test_flow_control_on_the_stdin_side() -> None:
    # The child reads nothing for a while: the client's bytes pile up in the stdin buffer,
    # which pauses the socket reader; nothing is lost once the child starts reading.
    data = pattern(2 * 1024 * 1024)
    code = ("import time, sys, hashlib\ntime.sleep(0.5)\n"
            "print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())")
    config = ExecSessionConfig(stdin_buffer=8192, stdout_buffer=8192, max_buffered=16384)
    with ServerThread(python_child(code), config=config) as server:
        received = exchange(server.address, data)
        [result] = server.wait_results(1)
    assert received.strip() == hashlib.sha256(data).hexdigest().encode()
    assert result.pauses >= 1
    assert result.peak_buffered <= config.max_buffered


# -- admission -----------------------------------------------------------------------------------
def test_max_conns_refuses_extra_clients_cleanly() -> None:
    with ServerThread(PYTHON_CAT, max_conns=2) as server:
        first = connect(server.address)
        second = connect(server.address)
        server.wait_sessions(2)
        with connect(server.address) as third:
            assert recv_all(third) == b""  # closed at once, without data
        assert server.server.refused == 1
        for sock in (first, second):
            sock.sendall(b"ok\n")
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b"ok\n"
            sock.close()
        server.wait_results(2)


@pytest.mark.parametrize(("allow", "deny", "served"), [
    ([], ["127.0.0.1"], False),
    (["10.0.0.0/8"], [], False),
    (["127.0.0.0/8"], [], True),
    (["127.0.0.0/8"], ["127.0.0.1/32"], False),
])
def test_allow_and_deny(allow: list[str], deny: list[str], served: bool) -> None:
    with ServerThread("echo served", shell=True,
                      address_filter=AddressFilter(allow, deny)) as server:
        received = exchange(server.address)
        if served:
            server.wait_results(1)
    assert (received.strip() == b"served") is served
    assert server.server.refused == (0 if served else 1)


class _ListenerOutOfFds:
    """Wraps the server's listener: the first ``accept`` fails as if the process had run out
    of file descriptors."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.failures = 0

    def fileno(self) -> int:
        return self.listener.fileno()

    def accept(self) -> tuple[socket.socket, Any]:
        if not self.failures:
            self.failures += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self.listener.accept()

    def setblocking(self, flag: bool) -> None:
        self.listener.setblocking(flag)

    def close(self) -> None:
        self.listener.close()


def test_accept_out_of_fds_backs_off_then_serves() -> None:
    with ServerThread(PYTHON_CAT) as server:
        wrapper = _ListenerOutOfFds(server.server._listener)  # type: ignore[arg-type]

        def swap() -> None:
            server.server._listener = wrapper  # type: ignore[assignment]
        server.loop.call_soon_threadsafe(swap)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            current: object = server.server._listener
            if current is wrapper:
                break
            time.sleep(0.01)
        assert exchange(server.address, b"later\n") == b"later\n"
        server.wait_results(1)
    assert wrapper.failures == 1


def test_without_keep_open_one_client_is_served() -> None:
    with ServerThread(PYTHON_CAT, keep_open=False) as server:
        assert exchange(server.address, b"one\n") == b"one\n"
        server.wait_results(1)
        with pytest.raises(OSError):
            socket.create_connection(server.address, timeout=WAIT).close()


# -- many sessions on one thread -----------------------------------------------------------------
def _raise_fd_limit(needed: int) -> None:
    """Each session holds a socket, three pipe ends and a pidfd, and the clients live in this
    process too: lift the soft fd limit to the hard one if it is lower than ``needed``."""
    if sys.platform == "win32":
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"this test needs {needed} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def test_many_concurrent_sessions() -> None:
    count = 200 if ON_WINDOWS else 1000
    _raise_fd_limit(count * 7 + 100)
    command = NATIVE_CAT
    with ServerThread(command, max_conns=0) as server:
        clients: list[socket.socket] = []
        try:
            for _ in range(count):
                clients.append(connect(server.address))
            server.wait_sessions(count)  # all of them alive at once
            selector = selectors.DefaultSelector()
            received: dict[socket.socket, bytearray] = {}
            for index, sock in enumerate(clients):
                sock.sendall(b"session %d\n" % index)
                sock.shutdown(socket.SHUT_WR)
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
                received[sock] = bytearray()
            deadline = time.monotonic() + WAIT * 2
            while selector.get_map() and time.monotonic() < deadline:
                for key, _ in selector.select(1.0):
                    sock = key.fileobj  # type: ignore[assignment]
                    data = sock.recv(4096)
                    if data:
                        received[sock] += data
                    else:
                        selector.unregister(sock)
            selector.close()
            for index, sock in enumerate(clients):
                assert bytes(received[sock]).replace(b"\r\n", b"\n") == b"session %d\n" % index
            results = server.wait_results(count)
        finally:
            for sock in clients:
                sock.close()
    assert server.peak_sessions == count
    assert [r.reason for r in results].count("exited") == count
    assert all(r.returncode == 0 for r in results)


def test_a_session_runs_on_its_own_loop() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()[:2]) as client:
        conn, _ = listener.accept()
        client.sendall(b"solo\n")
        client.shutdown(socket.SHUT_WR)
        session = ExecSession(conn, PYTHON_CAT)
        result = session.run(timeout=WAIT)
        assert recv_all(client) == b"solo\n"
    assert result is not None and result.returncode == 0


@pytest.mark.posix
def test_the_iocp_backend_is_refused_off_windows() -> None:
    with pytest.raises(ValueError, match="Windows"):
        open_loop("iocp")


@pytest.mark.posix
def test_exit_is_seen_without_pidfds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where pidfd_open is missing (older kernels, other POSIX systems) the child is polled
    with waitid(WNOWAIT), which also leaves it unreaped until its group is killed."""
    import os

    def no_pidfds(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfds)
    with ServerThread(python_child("import sys; print('polled'); sys.exit(5)")) as server:
        assert exchange(server.address).strip() == b"polled"
        [result] = server.wait_results(1)
    assert (result.reason, result.returncode) == ("exited", 5)
