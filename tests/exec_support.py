"""Helpers for the exec backend tests: the platform's backend and children, a server running on
its loop in a background thread, and blocking clients with bounded waits."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from execsession import (
    ExecServer,
    ExecSessionConfig,
    Loop,
    SessionResult,
    StdioMode,
    open_loop,
)

ON_WINDOWS = sys.platform == "win32"
BACKEND = "iocp" if ON_WINDOWS else "selectors"
WAIT = 60.0
"""Upper bound of any wait in these tests (they never assert timings)."""


def stop_server_process(server: subprocess.Popen[bytes]) -> None:
    """However a test ended, its server process is gone (killed if still running, waited for
    at most ``WAIT``) and its output pipe closed: nothing left behind."""
    if server.poll() is None:
        server.kill()
        server.wait(WAIT)
    if server.stdout is not None:
        server.stdout.close()


def python_child(code: str) -> list[str]:
    """argv running ``code`` in this Python, unbuffered, without site (faster under Wine)."""
    return [sys.executable, "-S", "-u", "-c", code]


ECHO_CODE = (
    "import os\n"
    "while True:\n"
    "    data = os.read(0, 65536)\n"
    "    if not data:\n"
    "        break\n"
    "    while data:\n"
    "        data = data[os.write(1, data):]\n"
)
PYTHON_CAT = python_child(ECHO_CODE)
NATIVE_CAT: list[str] = ["find.exe", "o"] if ON_WINDOWS else ["cat"]
"""A native filter that passes lines containing "o" unchanged: ``cat`` on POSIX; on Windows
``find "o"`` (Wine 8.0's ``find`` has no ``/v``, its ``findstr`` prints nothing)."""


def pattern(size: int) -> bytes:
    """``size`` deterministic, non-repeating-looking bytes."""
    block = hashlib.sha256(b"ntafd").digest() * 2048  # 64 KiB
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += bytes((byte + counter) & 0xFF for byte in block[:256]) + block[256:]
        counter += 1
    return bytes(out[:size])


class ServerThread:
    """An :class:`ExecServer` on its own loop, run by a background thread.

    ``stdio`` replaces a config's ``auto`` (the server's default): ``pipes`` unless told, since
    most of these tests are about the relay; test_exec_socket_stdio tests ``socket`` and
    ``auto``."""

    def __init__(self, command: Sequence[str] | str, *, shell: bool = False,
                 keep_open: bool = True, loop: Loop | None = None,
                 stdio: StdioMode = StdioMode.PIPES, **kwargs: Any) -> None:
        config = kwargs.pop("config", None) or ExecSessionConfig()
        if config.stdio is StdioMode.AUTO:
            config = dataclasses.replace(config, stdio=stdio)
        kwargs["config"] = config
        self.results: list[SessionResult] = []
        self.peak_sessions = 0
        self.loop = loop if loop is not None else open_loop(BACKEND)
        self.server = ExecServer(self.loop, ("127.0.0.1", 0), command, shell=shell,
                                 keep_open=keep_open, on_session_done=self.results.append,
                                 **kwargs)
        self.address = self.server.address
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        def done() -> bool:
            self.peak_sessions = max(self.peak_sessions, len(self.server.sessions))
            return self.server.done
        try:
            self.loop.run(until=done)
        except BaseException as error:  # surfaced by stop()
            self.error = error

    def wait_results(self, count: int, timeout: float = WAIT) -> list[SessionResult]:
        deadline = time.monotonic() + timeout
        while len(self.results) < count and time.monotonic() < deadline:
            if self.error is not None:
                raise self.error
            time.sleep(0.01)
        assert len(self.results) >= count, f"{len(self.results)} of {count} sessions ended"
        return list(self.results)

    def wait_sessions(self, count: int, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while len(self.server.sessions) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.server.sessions) >= count

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.close)
            self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the server's loop did not stop"
        self.loop.close()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def connect(address: tuple[str, int], rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT)
    sock.connect(address)
    return sock


def recv_all(sock: socket.socket, limit: int = 1 << 30,
             on_chunk: Callable[[int], None] | None = None) -> bytes:
    """Read until EOF (a reset counts as EOF)."""
    chunks = bytearray()
    while len(chunks) < limit:
        try:
            data = sock.recv(1 << 16)
        except ConnectionError:
            break
        if not data:
            break
        chunks += data
        if on_chunk is not None:
            on_chunk(len(chunks))
    return bytes(chunks)


def exchange(address: tuple[str, int], data: bytes = b"", *, half_close: bool = True) -> bytes:
    """Send ``data`` (from a thread, so a large input cannot deadlock against the output),
    half-close, and return everything received until EOF."""
    with connect(address) as sock:
        def send() -> None:
            try:
                if data:
                    sock.sendall(data)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        received = recv_all(sock)
        sender.join(WAIT)
        return received


def assert_only_the_victim_failed(server: ServerThread, bystander: socket.socket,
                                  failed: SessionResult) -> None:
    """After a session failed inside the server (``failed``): a session open meanwhile
    (``bystander``) and a new one are served as usual, and ``failed`` says why."""
    bystander.sendall(b"still here\n")
    bystander.shutdown(socket.SHUT_WR)
    assert recv_all(bystander) == b"still here\n"
    assert exchange(server.address, b"next\n") == b"next\n"
    results = server.wait_results(3)
    assert failed.reason == "internal-error"
    assert failed.error is not None and "injected failure" in failed.error
    assert [r.reason for r in results[1:]] == ["exited", "exited"]


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (not a zombie waiting to be reaped)."""
    if ON_WINDOWS:
        from ntdll import functions as nt
        try:
            handle = nt.OpenProcess(0x00100000, pid)  # SYNCHRONIZE
        except OSError:
            return False
        try:
            return nt.WaitForSingleObject(handle, 0) != 0
        finally:
            nt.CloseHandle(handle)
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_dead(pid: int, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def open_resources() -> int:
    """This process's open fds (POSIX) or handles (Windows)."""
    if ON_WINDOWS:
        from tests.support import process_handle_count
        return process_handle_count()
    return len(os.listdir("/proc/self/fd"))



