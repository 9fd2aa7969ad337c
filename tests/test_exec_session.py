"""The exec backend suite: the same tests run against the selectors backend (Linux leg) and the
IOCP backend (Wine leg), with real children and real sockets on 127.0.0.1."""

from __future__ import annotations

import errno
import gc
import hashlib
import selectors
import socket
import sys
import threading
import time
from typing import Any

import pytest

from execsession import ExecSession, ExecSessionConfig, StderrMode, open_loop
from execsession.backends import BACKEND_ENV, BACKENDS
from execsession.server import AddressFilter
from tests.exec_support import (
    NATIVE_CAT,
    ON_WINDOWS,
    PYTHON_CAT,
    WAIT,
    ServerThread,
    assert_only_the_victim_failed,
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


def test_the_default_backend_is_the_one_this_platform_can_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the code's rule restated: of the two backends exactly one opens here (IOCP needs
    the NT calls, selectors needs POSIX pipes), and the default is that one; the suite below
    then relays real sessions through it."""
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    opened = []
    for backend in BACKENDS:
        try:
            loop = open_loop(backend)
        except ValueError as refused:
            assert "needs" in str(refused)  # says what the backend needs
            continue
        with loop:
            assert loop.backend == backend
        opened.append(backend)
    assert len(opened) == 1, opened
    with open_loop() as loop:
        assert loop.backend == opened[0]


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


@pytest.fixture
def session_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests that watch the session's own buffers and flow control (pauses, peaks,
    growing and shrinking): on POSIX the splice relay holds no bytes at all (the kernel's pipes
    do: test_splice_relay.py), so the Python path runs there; the C relay of the IOCP backend
    gives full and small reads back to Python, so these tests run through it under Windows."""
    if not ON_WINDOWS:
        from execsession import session as session_module

        monkeypatch.setenv(session_module.C_RELAY_ENV, "0")


@pytest.mark.usefixtures("session_buffers")
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
        # The POSIX backend starts the child on a spawner thread: its pid comes a little later.
        assert loop.run(until=lambda: session.pid is not None, timeout=WAIT)
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
@pytest.mark.usefixtures("session_buffers")
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


@pytest.mark.usefixtures("session_buffers")
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


# -- buffers that grow ----------------------------------------------------------------------------
@pytest.mark.usefixtures("session_buffers")
def test_buffers_grow_and_a_slow_reader_keeps_memory_within_the_bound() -> None:
    # Small starting buffers and a child writing as fast as it can: the stdout buffer doubles
    # after reads that fill it, never past max_buffer; a client that reads late and slowly
    # pauses it; what the session holds never exceeds max_buffered; no byte is lost.
    count = (1 if ON_WINDOWS else 8) * 1024 * 1024 // 4
    code = ("import sys\n"
            f"sys.stdout.buffer.write(b''.join(i.to_bytes(4, 'little') for i in range({count})))\n")
    expected = b"".join(i.to_bytes(4, "little") for i in range(count))
    config = ExecSessionConfig(stdin_buffer=2048, stdout_buffer=4096, max_buffer=65536)
    assert config.max_buffered == 2 * 65536  # automatic: both buffers at their largest
    with ServerThread(python_child(code), config=config) as server:
        with connect(server.address, rcvbuf=16384) as sock:
            sock.shutdown(socket.SHUT_WR)
            time.sleep(0.5)  # let every buffer between the child and us fill up
            received = recv_all(sock)
        [result] = server.wait_results(1)
    assert hashlib.sha256(received).digest() == hashlib.sha256(expected).digest()
    assert result.buffer_grows >= 1
    assert 4096 < result.largest_buffer <= config.max_buffer
    # Held bytes grew past the starting size (the growth was used) and stayed bounded.
    assert 4096 < result.peak_buffered <= config.max_buffered


@pytest.mark.usefixtures("session_buffers")
def test_buffers_shrink_back_when_the_stream_goes_quiet() -> None:
    # A bulk transfer grows the buffers; the small round trips after it find them empty and
    # halve them back towards their starting size. Every byte of both phases comes back.
    bulk = pattern(512 * 1024 if ON_WINDOWS else 4 * 1024 * 1024)
    config = ExecSessionConfig(stdin_buffer=4096, stdout_buffer=4096, max_buffer=256 * 1024)
    with ServerThread(PYTHON_CAT, config=config) as server:
        with connect(server.address) as sock:
            sender = threading.Thread(target=sock.sendall, args=(bulk,), daemon=True)
            sender.start()
            got = recv_exactly(sock, len(bulk))
            sender.join(WAIT)
            assert got == bulk
            for index in range(12):
                line = b"line %d\n" % index
                sock.sendall(line)
                assert recv_exactly(sock, len(line)) == line
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b""
        [result] = server.wait_results(1)
    assert result.reason == "exited"
    assert result.buffer_grows >= 1 and result.largest_buffer > 4096
    assert result.buffer_shrinks >= 1, "the buffers never shrank after the bulk phase"


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


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


def _swap_listener(server: ServerThread, wrapper: object) -> None:
    """Put ``wrapper`` in the place of the server's listener, on the loop's thread, and wait
    until it is there."""
    def swap() -> None:
        server.server._listener = wrapper  # type: ignore[assignment]
    server.loop.call_soon_threadsafe(swap)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        current: object = server.server._listener
        if current is wrapper:
            break
        time.sleep(0.01)


def test_accept_out_of_fds_backs_off_then_serves() -> None:
    with ServerThread(PYTHON_CAT) as server:
        wrapper = _ListenerOutOfFds(server.server._listener)  # type: ignore[arg-type]

        _swap_listener(server, wrapper)
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


# -- issue 11: one failing session never stops the server ---------------------------------------
def test_one_failing_callback_loses_nothing_else_in_its_batch() -> None:
    """Two sockets readable in the same wait (one dequeue batch on IOCP, one select() on
    selectors) and two ready calls: the first of each raises. The loop logs it, tells the
    failing stream's owner, and still runs the others."""
    with open_loop() as loop:
        pairs = [socket.socketpair() for _ in range(2)]
        try:
            for _, peer in pairs:
                peer.sendall(b"ready")
            streams = [loop.socket_stream(ours) for ours, _ in pairs]
            failures: list[BaseException] = []
            streams[0].failure_handler = failures.append
            got: list[bytes] = []

            def explode(data: bytes | memoryview, error: BaseException | None) -> None:
                raise RuntimeError("injected: a completion callback failed")

            def keep(data: bytes | memoryview, error: BaseException | None) -> None:
                got.append(bytes(data))

            streams[0].read(100, explode)
            streams[1].read(100, keep)
            calls: list[str] = []

            def failing_call() -> None:
                raise RuntimeError("injected: a ready callback failed")

            loop.call_soon(failing_call)
            loop.call_soon(calls.append, "after")
            assert loop.run(until=lambda: bool(got and failures and calls), timeout=WAIT)
            for stream in streams:
                stream.close()
        finally:
            for ours, peer in pairs:
                ours.close()
                peer.close()
    assert got == [b"ready"] and calls == ["after"]
    assert [str(error) for error in failures] == ["injected: a completion callback failed"]


def test_a_failing_session_ends_alone_and_the_server_keeps_serving(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A session whose own callback raises (here: on the output that says "boom") ends as
    ``internal-error`` with its child's tree killed; a session open meanwhile and a new one
    are served as usual. On the Python relay path (the C relay step writes small output
    without this callback: its form of the test is test_c_relay's failing-event test)."""
    from execsession import session as session_module

    monkeypatch.setenv(session_module.C_RELAY_ENV, "0")
    original = ExecSession._on_stdout_data

    def faulty(self: ExecSession, data: bytes | memoryview, error: BaseException | None
               ) -> None:
        if b"boom" in bytes(data):
            raise RuntimeError("injected failure in a session callback")
        original(self, data, error)

    monkeypatch.setattr(ExecSession, "_on_stdout_data", faulty)
    with ServerThread(PYTHON_CAT) as server:
        with connect(server.address) as bystander:
            server.wait_sessions(1)
            with connect(server.address) as victim:
                victim.sendall(b"boom\n")
                assert recv_all(victim) == b""  # closed without the output
            [failed] = server.wait_results(1)
            assert_only_the_victim_failed(server, bystander, failed)


def test_a_failing_admission_or_on_session_done_does_not_stop_the_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with ServerThread(PYTHON_CAT) as server:
        seen: list[str] = []

        def failing_hook(result: Any) -> None:
            seen.append(result.reason)
            raise RuntimeError("injected failure in on_session_done")

        server.server.on_session_done = failing_hook
        assert exchange(server.address, b"one\n") == b"one\n"
        permits = server.server.filter.permits
        calls: list[str] = []

        def failing_once(host: str) -> bool:
            calls.append(host)
            if len(calls) == 1:
                raise RuntimeError("injected failure while admitting a client")
            return permits(host)

        monkeypatch.setattr(server.server.filter, "permits", failing_once)
        assert exchange(server.address, b"lost\n") == b""  # that client is closed
        assert exchange(server.address, b"two\n") == b"two\n"
        deadline = time.monotonic() + WAIT
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert seen == ["exited", "exited"]
    assert len(calls) == 2


class _ListenerBroken:
    """Wraps the server's listener: ``accept`` fails with an error that is not about
    resources nor about one connection, while ``failing`` is set."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.failing = True
        self.calls = 0

    def fileno(self) -> int:
        return self.listener.fileno()

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls += 1
        if self.failing:
            raise OSError(errno.EINVAL, "Invalid argument (injected)")
        return self.listener.accept()

    def setblocking(self, flag: bool) -> None:
        self.listener.setblocking(flag)

    def close(self) -> None:
        self.listener.close()


def test_an_unexpected_accept_error_backs_off_instead_of_spinning() -> None:
    with ServerThread(PYTHON_CAT) as server:
        wrapper = _ListenerBroken(server.server._listener)  # type: ignore[arg-type]

        _swap_listener(server, wrapper)
        with connect(server.address) as client:
            deadline = time.monotonic() + WAIT
            while not wrapper.calls and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(1.0)  # a spinning loop would call accept() many thousand times
            calls = wrapper.calls
            wrapper.failing = False
            client.sendall(b"served after all\n")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"served after all\n"
        server.wait_results(1)
    # Paused 0.1, 0.2, 0.4, 0.8 s... after each failure: a handful of calls, not a spin.
    assert 1 <= calls <= 10, calls


def _grandchild_command() -> tuple[str, bytes]:
    """A shell command whose child exits at once, leaving a backgrounded grandchild that holds
    its stdout: prints the grandchild's pid, later "late", then sleeps for two minutes."""
    if ON_WINDOWS:
        # cmd.exe exits at once; the python grandchild takes a while to start, so all it
        # writes comes after the child's exit.
        code = ("import os,time; print(os.getpid(), flush=True); "
                "print('late', flush=True); time.sleep(120)")
        return f'start /b "" "{sys.executable}" -S -u -c "{code}"', b"late"
    return "(sleep 0.5; echo late; exec sleep 120) & echo $!", b"late"


def test_a_grandchild_holding_the_output_is_drained_then_killed() -> None:
    """ONE behaviour on both backends (cmd.exe's ``start /b`` in Wine, a backgrounded
    subshell under sh): the child exits at once; what the grandchild writes within
    ``drain_timeout`` reaches the client; then the tree is killed and the session ends as
    ``exited`` with the child's code — not after the grandchild's two minutes."""
    command, late = _grandchild_command()
    config = ExecSessionConfig(drain_timeout=8.0)  # room for a slow start under load
    with ServerThread(command, shell=True, keep_open=False, config=config) as server:
        received = exchange(server.address)
        [result] = server.wait_results(1)
    [grandchild] = [int(word) for word in received.split() if word.isdigit()]
    assert late in received
    assert (result.reason, result.returncode) == ("exited", 0)
    assert wait_dead(grandchild), "the grandchild outlived the session"


@pytest.mark.parametrize("stdio", ["pipes", pytest.param("socket", marks=pytest.mark.posix)])
def test_the_server_ends_every_session_by_force_when_told_to_shut_down(stdio: str) -> None:
    """ExecServer.shutdown (what ntafd-exec runs on every way out): with no time left to wait,
    each remaining session is ended at once, its whole tree killed — relayed or on the
    socket itself (the selectors loop's)."""
    with open_loop() as loop:
        from execsession import ExecServer, ExecSessionConfig, StdioMode

        results: list[Any] = []
        server = ExecServer(loop, ("127.0.0.1", 0), python_child(TREE_CODE), keep_open=True,
                            config=ExecSessionConfig(stdio=StdioMode(stdio)),
                            on_session_done=results.append)
        with connect(server.address) as client:
            line = bytearray()

            def read_pid() -> bool:
                try:
                    line.extend(client.recv(1))
                except OSError:
                    pass
                return b"\n" in line

            client.settimeout(0.01)
            deadline = time.monotonic() + WAIT
            # Short runs: a child on the socket itself gives the loop no event to wake for.
            while not read_pid() and time.monotonic() < deadline:
                loop.run(timeout=0.02)
            grandchild = int(line)
            [session] = server.sessions
            child = session.pid
            assert child is not None and process_alive(grandchild)
            server.shutdown(timeout=0)
        assert not server.sessions
    assert [result.reason for result in results] == ["server-shutdown"]
    assert wait_dead(child) and wait_dead(grandchild)


@pytest.mark.windows
def test_a_failure_while_building_the_pipes_is_raised_as_itself(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The child is already running when its pipes' streams are built: a failure there is
    raised as it is (it was masked by an AttributeError from the clean-up), and the child is
    killed with its job."""
    import subprocess

    from execsession import StderrMode as Mode
    from execsession import iocp_child

    started: list[subprocess.Popen[bytes]] = []

    class RecordingPopen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    built: list[object] = []
    real_pipe_stream = iocp_child.pipe_stream  # type: ignore[attr-defined]

    def failing_pipe_stream(loop: Any, handle: Any) -> Any:
        if built:
            handle.close()
            raise OSError("injected: associating the stdout pipe failed")
        stream = real_pipe_stream(loop, handle)
        built.append(stream)
        return stream

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    monkeypatch.setattr(iocp_child, "pipe_stream", failing_pipe_stream)
    with open_loop() as loop:
        with pytest.raises(OSError, match="injected: associating"):
            loop.spawn(python_child("import time; time.sleep(120)"), shell=False,
                       stderr=Mode.MERGE, pipe_sizes=(4096, 4096, 4096))
    [process] = started
    assert wait_dead(process.pid)
    process.wait(WAIT)
