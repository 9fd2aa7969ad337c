"""Exec relay benchmark: ntafd-exec against other socket-to-process relays, side by side.

    .cache/venv/bin/python bench/exec_relay.py            # Linux: vs socat, ncat, threads
    tools/winpy bench/exec_relay.py                       # Wine: vs threads, asyncio Proactor
    .cache/venv/bin/python bench/exec_relay.py --wine-requests   # wineserver requests

The threaded relay is the design ntafd-exec replaces: three blocking threads per connection
(socket -> stdin, stdout -> socket, stderr -> socket). On Linux ntafd-exec's default gives cat
the connection itself as its stdio (nothing relayed, as inetd); ``--stdio pipes`` and
``--buffer 256k`` are its relay. ``--wine-requests`` (run on Linux)
counts each Wine server's wineserver requests per MiB and per round trip: bench/wine_requests.py.

For each server (a separate process on 127.0.0.1, serving every client with a fresh child):

* throughput: ``--size`` MiB sent through ``cat`` and read back on one connection, MiB/s;
* latency: 64-byte round trips (median and p99, microseconds), ``--rtt-rounds`` rounds of one
  connection each, every server running and measured in turn;
* CPU seconds per GiB relayed (Linux: the server's process tree, children included, so
  ``cat``'s own share is in every figure; Windows: the server process alone);
* concurrency: ``--sessions`` clients connected at once, each echoing one line; errors counted;
  ``--session-rounds`` runs per server, the servers in turn, median seconds.

Ratios are ntafd-exec's figure over each other server's (throughput: higher is better for
ntafd-exec; latency and CPU: lower is). Every loop is bounded in time and count. Figures from
one run are comparable with each other, not with another machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO

ON_WINDOWS = sys.platform == "win32"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASE_LIMIT = 180.0
"""No phase of one server runs longer than this (seconds)."""
STALL = 10.0
"""A relay that moves no byte for this long is stalled (ncat -e deadlocks under full-duplex
load: its relay process blocks writing cat's stdin while cat blocks writing its stdout)."""


class Stalled(Exception):
    """The relay stopped moving bytes."""

ECHO_CODE = (
    "import os\n"
    "while True:\n"
    "    data = os.read(0, 65536)\n"
    "    if not data:\n"
    "        break\n"
    "    while data:\n"
    "        data = data[os.write(1, data):]\n"
)


@dataclass
class Figures:
    name: str
    mib_per_s: float = 0.0
    mib_per_s_runs: list[float] = field(default_factory=list)
    rtt_us: list[float] = field(default_factory=list)
    cpu_per_gib: float | None = None
    rtt_median_us: float = 0.0
    rtt_p99_us: float = 0.0
    sessions_ok: int = 0
    sessions_failed: int = 0
    sessions_runs: list[float] = field(default_factory=list)
    rtt_round_medians: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def sessions_seconds(self) -> float:
        """The median of the concurrent-sessions runs (0 before any)."""
        return statistics.median(self.sessions_runs) if self.sessions_runs else 0.0


# -- the servers ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            time.sleep(0.2)  # let the probe's session end before measuring
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start listening")


def start_server(argv: Sequence[str], port: int) -> subprocess.Popen[bytes]:
    environment = None
    if argv and "=" in argv[0]:  # leading NAME=VALUE words set the server's environment
        environment = dict(os.environ)
        while argv and "=" in argv[0]:
            name, _, value = argv[0].partition("=")
            environment[name] = value
            argv = argv[1:]
    process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=ROOT, env=environment)
    try:
        wait_ready(port, process)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tree_cpu_seconds(pid: int, port: int | None = None) -> float | None:
    """utime + stime of ``pid`` and its reaped children (Linux ``/proc``); on Windows the
    process's own user + kernel time (Windows keeps no children's total, and under Wine the
    wineserver's share is not in it). Under Wine, ``GetProcessTimes`` of another process gave
    the same figure for every server (ACTIVE_KB issue 10), so there the server is found in the
    host's ``/proc`` by its command line (which names ``port``) and read from there."""
    if sys.platform == "win32":
        if port is not None:
            found = _wine_host_cpu_seconds(port)
            if found is not None:
                return found
        return _windows_cpu_seconds(pid)
    return _proc_cpu_seconds(str(pid))


def _wine_host_cpu_seconds(port: int) -> float | None:
    """Under Wine: utime + stime of the host process whose command line is a Windows python
    with ``port`` among its arguments (a server started by :func:`start_server`)."""
    proc = "Z:\\proc"
    try:
        names = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return None
    wanted = str(port).encode()
    for name in names:
        try:
            with open(f"{proc}\\{name}\\cmdline", "rb") as cmdline:
                arguments = cmdline.read().split(b"\0")
        except OSError:
            continue
        if wanted in arguments and any(b"python" in a.lower() for a in arguments[:1]):
            return _proc_cpu_seconds(name, proc, own_only=True)
    return None


def _proc_cpu_seconds(pid: str, proc: str = "/proc", own_only: bool = False) -> float | None:
    separator = "\\" if proc != "/proc" else "/"
    try:
        with open(f"{proc}{separator}{pid}{separator}stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime stime (+ cutime cstime: reaped children, Linux; a Wine server's child may be
    # reaped by it too, but the Windows figure is the server's own)
    ticks = sum(int(value) for value in fields[11:13 if own_only else 15])
    return ticks / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


def _windows_cpu_seconds(pid: int) -> float | None:
    if sys.platform != "win32":
        return None
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = ctypes.c_void_p
    kernel32.OpenProcess.argtypes = [ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint32]
    kernel32.GetProcessTimes.argtypes = [ctypes.c_void_p] + [ctypes.c_void_p] * 4
    kernel32.CloseHandle.argtypes = [ctypes.c_void_p]
    handle = kernel32.OpenProcess(0x1000, 0, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return None
    try:
        times = [ctypes.c_uint64() for _ in range(4)]  # creation, exit, kernel, user (100 ns)
        if not kernel32.GetProcessTimes(handle, *[ctypes.byref(t) for t in times]):
            return None
        return (times[2].value + times[3].value) / 1e7
    finally:
        kernel32.CloseHandle(handle)


# -- the measurements ----------------------------------------------------------------------------
def throughput(port: int, size: int) -> float:
    """Seconds to send ``size`` bytes through the server's child and read them all back.

    The client does not half-close: ncat -e closes the whole connection on the client's EOF,
    dropping what the child had not yet sent back (seen with ncat 7.93), so the client reads
    exactly ``size`` bytes and then closes, which every server handles.
    """
    block = os.urandom(256 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=STALL) as sock:
        failure: list[BaseException] = []

        def send() -> None:
            try:
                left = size
                while left:
                    chunk = block if left >= len(block) else block[:left]
                    sock.sendall(chunk)
                    left -= len(chunk)
            except BaseException as error:
                failure.append(error)

        start = time.perf_counter()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        buffer = bytearray(1 << 20)
        received = 0
        deadline = time.monotonic() + PHASE_LIMIT
        while received < size and time.monotonic() < deadline:
            try:
                count = sock.recv_into(buffer)
            except TimeoutError:
                raise Stalled(f"no byte for {STALL:.0f} s after {received} of {size}") from None
            if not count:
                break
            received += count
        elapsed = time.perf_counter() - start
        sender.join(PHASE_LIMIT)
    if failure:
        raise failure[0]
    if received != size:
        raise RuntimeError(f"received {received} of {size} bytes")
    return elapsed


def round_trips(port: int, count: int) -> list[float]:
    """Round-trip times (seconds) of 64-byte messages echoed by the child."""
    message = b"x" * 63 + b"\n"
    times: list[float] = []
    deadline = time.monotonic() + PHASE_LIMIT / 3
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count + 1):
            if time.monotonic() > deadline:
                break
            start = time.perf_counter()
            sock.sendall(message)
            got = 0
            while got < len(message):
                data = sock.recv(256)
                if not data:
                    raise RuntimeError("connection closed during the round trips")
                got += len(data)
            times.append(time.perf_counter() - start)
    return times[1:]  # the first waited for the child to start


def concurrency(port: int, sessions: int) -> tuple[int, int, float]:
    """``sessions`` clients connected at once, each echoing one line: (ok, failed, seconds)."""
    start = time.perf_counter()
    deadline = time.monotonic() + PHASE_LIMIT
    clients: list[socket.socket] = []
    failed = 0
    selector = selectors.DefaultSelector()
    expected: dict[socket.socket, bytes] = {}
    received: dict[socket.socket, bytearray] = {}
    try:
        for index in range(sessions):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            except OSError:
                failed += 1
                continue
            clients.append(sock)
            expected[sock] = b"session %d ok\n" % index
        time.sleep(0.2)  # let the server accept them all before anyone finishes
        for sock in clients:
            try:
                sock.sendall(expected[sock])  # no half-close: see throughput()
            except OSError:
                failed += 1
                continue
            sock.setblocking(False)
            received[sock] = bytearray()
            selector.register(sock, selectors.EVENT_READ)
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(1.0):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if data:
                    received[sock] += data
                text = bytes(received[sock]).replace(b"\r\n", b"\n")
                if not data or len(text) >= len(expected[sock]):
                    selector.unregister(sock)
        ok = sum(1 for sock, data in received.items()
                 if bytes(data).replace(b"\r\n", b"\n") == expected[sock])
        failed += len(received) - ok
    finally:
        selector.close()
        for sock in clients:
            sock.close()
    return ok, failed, time.perf_counter() - start


def measure(name: str, command: Callable[[int], list[str]], args: argparse.Namespace) -> Figures:
    """Throughput, CPU per GiB and round trips of one server (one server process)."""
    figures = Figures(name)
    port = free_port()
    argv = command(port)
    size = args.size * 1024 * 1024
    server = start_server(argv, port)
    try:
        cpu_before = tree_cpu_seconds(server.pid, port)
        best: float | None = None
        stalled = False
        for _ in range(args.repeat):
            try:
                seconds = throughput(port, size)
            except Stalled as stall:
                figures.notes.append(f"throughput stalled: {stall}")
                stalled = True
                break
            best = seconds if best is None else min(best, seconds)
            figures.mib_per_s_runs.append(args.size / seconds)
        if best is not None:
            figures.mib_per_s = args.size / best
            time.sleep(0.3)  # let the server reap the session's processes (their CPU counts)
            cpu_after = tree_cpu_seconds(server.pid, port)
            if cpu_before is not None and cpu_after is not None and not stalled:
                figures.cpu_per_gib = (cpu_after - cpu_before) / (args.repeat * args.size / 1024)
    finally:
        stop_server(server)
    return figures


def measure_round_trips(all_figures: list[Figures], commands: list[Callable[[int], list[str]]],
                        args: argparse.Namespace) -> None:
    """64-byte round trips, every server running at once and measured in turn for
    ``--rtt-rounds`` rounds (a fresh connection, and so child, per round; its first exchange
    untimed): minutes of changing load land on every server alike (ACTIVE_KB SB8)."""
    servers: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        for command in commands:
            port = free_port()
            servers.append((start_server(command(port), port), port))
        per_round = max(1, args.round_trips // max(1, args.rtt_rounds))
        for _ in range(args.rtt_rounds):
            for figures, (_, port) in zip(all_figures, servers, strict=True):
                times = [t * 1e6 for t in round_trips(port, per_round)]
                if times:
                    figures.rtt_us += times
                    figures.rtt_round_medians.append(statistics.median(times))
    finally:
        for server, _ in servers:
            stop_server(server)
    for figures in all_figures:
        if figures.rtt_us:
            ordered = sorted(figures.rtt_us)
            figures.rtt_median_us = statistics.median(ordered)
            figures.rtt_p99_us = ordered[max(0, int(len(ordered) * 0.99) - 1)]


def measure_sessions(figures: Figures, command: Callable[[int], list[str]],
                     args: argparse.Namespace) -> None:
    """One run of the concurrent-sessions phase on a fresh server (a fresh port: the first
    may still have connections in TIME_WAIT); ``figures.sessions_seconds`` is the median of
    the runs so far and the failures their sum."""
    port = free_port()
    server = start_server(command(port), port)
    try:
        ok, failed, seconds = concurrency(port, args.sessions)
    finally:
        stop_server(server)
    figures.sessions_runs.append(seconds)
    figures.sessions_ok += ok
    figures.sessions_failed += failed


# -- an asyncio Proactor relay (the Wine comparison) ---------------------------------------------
async def _asyncio_relay(port: int, command: list[str],
                         on_session_done: Callable[[], None] | None = None) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdin is not None and process.stdout is not None
        stdin, stdout = process.stdin, process.stdout

        async def to_child() -> None:
            try:
                while data := await reader.read(65536):
                    stdin.write(data)
                    await stdin.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                stdin.close()

        async def to_client() -> None:
            while data := await stdout.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()

        try:
            await asyncio.gather(to_child(), to_client())
        except (ConnectionError, OSError):
            process.kill()
        finally:
            await process.wait()
            writer.close()
            if on_session_done is not None:
                on_session_done()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
    async with server:
        await server.serve_forever()


async def _asyncio_relay_once(port: int, command: list[str]) -> None:
    """The asyncio relay serving one client, then exiting (for counting wineserver requests)."""
    finished = asyncio.Event()
    server = asyncio.get_running_loop().create_task(
        _asyncio_relay(port, command, on_session_done=finished.set))
    await finished.wait()
    server.cancel()
    try:
        await server
    except asyncio.CancelledError:
        pass


# -- the threaded relay (the design the IOCP backend replaces) -----------------------------------
THREAD_CHUNK = 65536


def _threaded_session(conn: socket.socket, command: list[str]) -> None:
    """One connection, three blocking threads: socket -> stdin, stdout -> socket (this one),
    stderr -> socket, like the threaded Windows exec backend the plan replaced."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, bufsize=0)
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
    send_lock = threading.Lock()
    lost = threading.Event()

    def to_child() -> None:
        try:
            while data := conn.recv(THREAD_CHUNK):
                view = memoryview(data)
                while view:
                    view = view[stdin.write(view) or 0:]
        except OSError:
            pass
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def to_client(source: IO[bytes]) -> None:
        try:
            while data := source.read(THREAD_CHUNK):
                with send_lock:
                    conn.sendall(data)
        except OSError:
            lost.set()
            process.kill()

    threads = [threading.Thread(target=to_child, daemon=True),
               threading.Thread(target=to_client, args=(stderr,), daemon=True)]
    for thread in threads:
        thread.start()
    to_client(stdout)
    threads[1].join()
    if not lost.is_set():
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    process.wait()
    threads[0].join(5.0)  # ends with the client's EOF or reset
    conn.close()
    stdout.close()
    stderr.close()


def _threaded_relay(port: int, command: list[str], once: bool) -> None:
    with socket.create_server(("127.0.0.1", port), backlog=512) as listener:
        while True:
            conn, _ = listener.accept()
            session = threading.Thread(target=_threaded_session, args=(conn, command),
                                       daemon=True)
            session.start()
            if once:
                session.join()
                return


# -- main ----------------------------------------------------------------------------------------
def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "n/a"


def report(all_figures: list[Figures], args: argparse.Namespace) -> None:
    print(f"\nsize {args.size} MiB x{args.repeat}, {args.round_trips} round trips of 64 bytes, "
          f"{args.sessions} concurrent sessions")
    print(f"{'server':<26}{'MiB/s':>9}{'CPU s/GiB':>11}{'rtt med us':>12}{'rtt p99 us':>12}"
          f"{'sessions ok/failed':>20}{'secs':>7}")
    for figures in all_figures:
        cpu = f"{figures.cpu_per_gib:.2f}" if figures.cpu_per_gib is not None else "-"
        print(f"{figures.name:<26}{figures.mib_per_s:>9.1f}{cpu:>11}"
              f"{figures.rtt_median_us:>12.0f}{figures.rtt_p99_us:>12.0f}"
              f"{figures.sessions_ok:>12}/{figures.sessions_failed:<7}"
              f"{figures.sessions_seconds:>7.1f}")
    ours = [figures for figures in all_figures if figures.name.startswith("ntafd-exec")]
    others = [figures for figures in all_figures if figures not in ours]
    print()
    for mine in ours:
        for other in others:
            line = (f"{mine.name} / {other.name}: throughput "
                    f"{ratio(mine.mib_per_s, other.mib_per_s)}, latency "
                    f"{ratio(mine.rtt_median_us, other.rtt_median_us)}")
            if mine.cpu_per_gib is not None and other.cpu_per_gib:
                line += f", CPU per GiB {ratio(mine.cpu_per_gib, other.cpu_per_gib)}"
            print(line)
    for figures in all_figures:
        for note in figures.notes:
            print(f"{figures.name}: {note}")
    failures = sum(figures.sessions_failed for figures in all_figures)
    print(f"session errors: {failures}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32 if ON_WINDOWS else 256,
                        help="MiB through cat per throughput run")
    parser.add_argument("--repeat", type=int, default=2, help="throughput runs (best counts)")
    parser.add_argument("--round-trips", type=int, default=500 if ON_WINDOWS else 2000)
    parser.add_argument("--sessions", type=int, default=200 if ON_WINDOWS else 1000)
    parser.add_argument("--rtt-rounds", type=int, default=5,
                        help="rounds of the round-trip phase, servers in turn (medians)")
    parser.add_argument("--session-rounds", type=int, default=3,
                        help="runs of the sessions phase per server, servers in turn (median)")
    parser.add_argument("--json", help="also write the figures for bench/report.py here")
    parser.add_argument("--wine-requests", action="store_true",
                        help="(Linux) count the wineserver requests of each Wine server per "
                             "MiB and per round trip, instead of timing")
    parser.add_argument("--asyncio-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--threaded-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--requests-client", nargs=3, metavar=("KIND", "COUNT", "PORT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("command", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.asyncio_server:
        asyncio.run(_asyncio_relay_once(args.asyncio_server, args.command) if args.once
                    else _asyncio_relay(args.asyncio_server, args.command))
        return 0
    if args.threaded_server:
        _threaded_relay(args.threaded_server, args.command, args.once)
        return 0
    if args.requests_client:
        from bench.wine_requests import client_run

        kind, count, port = args.requests_client
        return client_run(kind, int(count), int(port), args.command)
    if args.wine_requests:
        from bench.wine_requests import count_all

        return count_all(args.json)

    python = sys.executable
    ours = [python, "-m", "execsession", "-k", "-m", "0", "-l"]
    big = ["--buffer", "256k"]  # stdout 256 KiB, stdin 128 KiB: fewer, larger reads
    results: list[Figures] = []
    runs: list[tuple[str, Callable[[int], list[str]], Callable[[int], list[str]] | None]]
    if ON_WINDOWS:
        cat = [python, "-S", "-u", "-c", ECHO_CODE]
        light = ["find.exe", "o"]  # Wine's find passes lines containing "o": a cheap echo
        runs = [
            ("ntafd-exec (iocp)", lambda port: [*ours, str(port), "-e", *cat],
             lambda port: [*ours, str(port), "-e", *light]),
            ("ntafd-exec --buffer 256k", lambda port: [*ours, str(port), *big, "-e", *cat],
             lambda port: [*ours, str(port), *big, "-e", *light]),
            ("threaded relay",
             lambda port: [python, __file__, "--threaded-server", str(port), "--", *cat],
             lambda port: [python, __file__, "--threaded-server", str(port), "--", *light]),
            ("asyncio Proactor relay",
             lambda port: [python, __file__, "--asyncio-server", str(port), "--", *cat],
             lambda port: [python, __file__, "--asyncio-server", str(port), "--", *light]),
        ]
    else:
        missing = [tool for tool in ("socat", "ncat", "cat") if shutil.which(tool) is None]
        if missing:
            print(f"missing: {', '.join(missing)} (tools/install-linux.sh installs them)")
            return 2
        runs = [
            # The default: the connection itself as cat's stdio (execsession.socket_stdio).
            ("ntafd-exec (socket stdio)", lambda port: [*ours, str(port), "-e", "cat"], None),
            ("ntafd-exec --stdio pipes",
             lambda port: [*ours, str(port), "--stdio", "pipes", "-e", "cat"], None),
            ("ntafd-exec --buffer 256k", lambda port: [*ours, str(port), *big, "-e", "cat"],
             None),
            ("socat fork EXEC:cat",
             lambda port: ["socat", f"TCP-LISTEN:{port},fork,reuseaddr,backlog=1024",
                           "EXEC:cat"], None),
            ("ncat -l -k -e /bin/cat",
             lambda port: ["ncat", "-l", "-k", "-m", "10000", "-e", "/bin/cat",
                           "127.0.0.1", str(port)], None),
            ("threaded relay",
             lambda port: [python, __file__, "--threaded-server", str(port), "--", "cat"],
             None),
        ]
    for name, command, _ in runs:
        print(f"measuring {name} ...", flush=True)
        results.append(measure(name, command, args))
    if args.round_trips and args.rtt_rounds:
        print(f"round trips, {args.rtt_rounds} rounds, servers in turn ...", flush=True)
        measure_round_trips(results, [command for _, command, _ in runs], args)
    # Concurrent sessions are timed in turns (every server once per round): on a shared machine
    # minutes of changing load would otherwise land on one server (ACTIVE_KB SB1).
    for round_index in range(args.session_rounds if args.sessions else 0):
        for figures, (name, command, light_command) in zip(results, runs, strict=True):
            print(f"{args.sessions} sessions, round {round_index + 1}: {name} ...", flush=True)
            measure_sessions(figures, light_command or command, args)
    report(results, args)
    if args.json:
        write_json(results, args)
    return 0


def write_json(all_figures: list[Figures], args: argparse.Namespace) -> None:
    """The figures in bench.common's JSON format (for ``make bench``'s table and charts):
    throughput per run, round trips as the median of each round."""
    from bench.common import Results

    results = Results(f"exec_relay-{'wine' if ON_WINDOWS else 'linux'}")
    for figures in all_figures:
        if figures.mib_per_s_runs:
            results.record("exec_relay", f"throughput, {args.size} MiB through cat",
                           figures.name, "MiB/s", "higher", figures.mib_per_s_runs,
                           note="; ".join(figures.notes))
        else:
            results.unavailable("exec_relay", f"throughput, {args.size} MiB through cat",
                                figures.name, "MiB/s", "higher", "; ".join(figures.notes))
        if figures.rtt_round_medians:
            results.record("exec_relay", "64-byte round trip", figures.name, "µs", "lower",
                           figures.rtt_round_medians, note="servers in turn")
        if figures.cpu_per_gib is not None:
            results.record("exec_relay", "CPU per GiB", figures.name, "CPU s/GiB", "lower",
                           [figures.cpu_per_gib], note="the server's process tree")
        if figures.sessions_runs:
            results.record("exec_relay", f"{args.sessions} concurrent sessions", figures.name,
                           "s", "lower", figures.sessions_runs,
                           note=f"{figures.sessions_failed} failed; servers in turn")
    results.write(args.json)


if __name__ == "__main__":
    sys.exit(main())
