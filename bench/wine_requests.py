"""Wineserver requests per MiB and per 64-byte round trip of each Wine exec server.

Under Wine every NT call that needs the kernel's state is a request to the wineserver process
(on Windows the matching cost is a kernel transition), so counting requests compares designs
where timings on a loaded 2-core machine cannot. Run from the Linux side:

    .cache/venv/bin/python -m bench.exec_relay --wine-requests [--json FILE]

For each server (ntafd-exec with its defaults, the threaded relay, the asyncio Proactor relay)
and each kind of work (bulk MiB through ``cat``, 64-byte round trips), ``wine-requests``
(``../shared/tools/wine-requests``, or ``$NTAFD_WINE_REQUESTS``) counts the requests of one
Wine session — the server serving one client and exiting, the client being this Linux python —
with N and with 2N operations: (count(2N) - count(N)) / N is the cost of one operation, start-up
and shut-down cancelling out. The count covers the whole prefix: the server *and* its child
(the same Windows-python ``cat`` for every server), so the ratios between servers understate
the servers' own difference. A second figure counts only the server process's own requests
(threads attributed to processes from the trace's ``init_first_thread`` and ``new_thread``
replies).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable

from bench.exec_relay import ECHO_CODE, ROOT, free_port, round_trips, throughput

MIB = 1024 * 1024
BULK_MIB = 8
"""N for the bulk figure (MiB); 2N is also run."""
ROUND_TRIPS = 200
"""N for the round-trip figure; 2N is also run."""
REQUEST_LINE = re.compile(r"^([0-9a-f]{4}): ([a-z_]+)\( ")
REPLY_LINE = re.compile(r"^([0-9a-f]{4}): ([a-z_]+)\(\) = \w+ \{(.*)\}")


def _winpath(path: str) -> str:
    return "Z:" + path.replace("/", "\\")


def _subjects() -> list[tuple[str, Callable[[int], list[str]]]]:
    python = _winpath(os.path.join(ROOT, ".cache", "winpython", "python", "python.exe"))
    cat = [python, "-S", "-u", "-c", ECHO_CODE]
    relay = ["-m", "bench.exec_relay"]
    return [
        ("ntafd-exec (iocp, defaults)",
         lambda port: ["-m", "execsession", "-v", "-l", str(port), "-e", *cat]),
        ("threaded relay",
         lambda port: [*relay, "--threaded-server", str(port), "--once", "--", *cat]),
        ("asyncio Proactor relay",
         lambda port: [*relay, "--asyncio-server", str(port), "--once", "--", *cat]),
    ]


# -- one counted session (runs inside wine-requests) ---------------------------------------------
def _listening(port: int) -> bool:
    wanted = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as table:
            return any(line.split()[1] == wanted and line.split()[3] == "0A"
                       for line in table.readlines()[1:])
    except OSError:
        return False


def client_run(kind: str, count: int, port: int, server_argv: list[str]) -> int:
    """Start ``server_argv`` (a one-client server under Wine), wait until it listens (without
    connecting: its one session is the measured one), do ``count`` operations, wait for it
    to exit. Exit status 0 when all went through and the server exited cleanly."""
    server = subprocess.Popen(server_argv, stdin=subprocess.DEVNULL, stdout=sys.stderr,
                              stderr=sys.stderr, cwd=ROOT)  # its errors explain a failure
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            if server.poll() is not None or time.monotonic() > deadline:
                print(f"server did not listen (exit status {server.poll()})", file=sys.stderr)
                return 2
            time.sleep(0.05)
        if kind == "bulk":
            throughput(port, count * MIB)
        else:
            done = len(round_trips(port, count))
            if done != count:
                print(f"only {done} of {count} round trips", file=sys.stderr)
                return 3
        return server.wait(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


# -- the counting ---------------------------------------------------------------------------------
def _tool() -> str:
    return os.environ.get("NTAFD_WINE_REQUESTS") or os.path.join(
        os.path.dirname(ROOT), "shared", "tools", "wine-requests")


def count_session(subject: Callable[[int], list[str]], kind: str, count: int
                  ) -> tuple[int, Counter[str], Counter[str]]:
    """(all requests, all by name, the server process's own by name) of one session."""
    port = free_port()
    winpy = os.path.join(ROOT, "tools", "winpy")
    with tempfile.NamedTemporaryFile(prefix="wine-requests-", suffix=".trace") as trace:
        command = [_tool(), "--top", "1", "--keep", trace.name, "--",
                   sys.executable, "-m", "bench.exec_relay", "--requests-client", kind,
                   str(count), str(port), "--", winpy, *subject(port)]
        environment = dict(os.environ, WINEPREFIX=os.path.join(ROOT, ".cache", "wineprefix"))
        done = subprocess.run(command, cwd=ROOT, env=environment, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[-8:])}: exit status {done.returncode}: "
                               f"{done.stdout[-500:]} {done.stderr[-500:]}")
        return _parse(trace.name)


def _parse(path: str) -> tuple[int, Counter[str], Counter[str]]:
    """Count requests by name, overall and for the server process. Threads are attributed to
    processes by the replies that name them (``new_thread``: the tid a thread created, first
    taken as its creator's; ``init_first_thread``: a new process's pid and first tid, which
    corrects that for a process's first thread). The server is the process that made the most
    socket requests (the client is a Linux process, the child uses pipes only)."""
    everything: Counter[str] = Counter()
    by_thread: dict[str, Counter[str]] = {}
    process_of: dict[str, str] = {}
    with open(path, errors="replace") as trace:
        for line in trace:
            match = REQUEST_LINE.match(line)
            if match:
                thread, name = match.groups()
                everything[name] += 1
                by_thread.setdefault(thread, Counter())[name] += 1
                continue
            if "init_first_thread() =" not in line and "new_thread() =" not in line:
                continue
            reply = REPLY_LINE.match(line)
            if reply is None:
                continue
            thread, name, body = reply.groups()
            fields = dict(part.strip().split("=", 1) for part in body.split(",")
                          if "=" in part)
            if name == "init_first_thread" and "pid" in fields:
                process_of[thread] = fields["pid"]
            elif name == "new_thread" and "tid" in fields and thread in process_of:
                process_of[fields["tid"]] = process_of[thread]
    by_process: dict[str, Counter[str]] = {}
    for thread, counts in by_thread.items():
        by_process.setdefault(process_of.get(thread, "?"), Counter()).update(counts)
    sockets = ("recv_socket", "send_socket", "accept_socket", "poll_socket", "socket_get_events")
    server = max(by_process.values(), key=lambda counts: sum(counts[n] for n in sockets),
                 default=Counter())
    return sum(everything.values()), everything, server


def count_all(json_path: str | None, repeat: int = 2) -> int:
    """Every subject and kind, ``repeat`` N-vs-2N pairs each (a bulk transfer's reads, and so
    its requests, vary with timing: the spread shows by how much)."""
    from bench.common import Results

    results = Results("exec_relay-wine-requests")
    failed = False
    for name, subject in _subjects():
        for kind, count, case in (("bulk", BULK_MIB, "wineserver requests per MiB"),
                                  ("rtt", ROUND_TRIPS, "wineserver requests per round trip")):
            per_op: list[float] = []
            own: list[float] = []
            by_name: Counter[str] = Counter()
            try:
                for _ in range(repeat):
                    small = count_session(subject, kind, count)
                    large = count_session(subject, kind, 2 * count)
                    per_op.append((large[0] - small[0]) / count)
                    own.append((sum(large[2].values()) - sum(small[2].values())) / count)
                    by_name.update(large[1])
                    by_name.subtract(small[1])
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                results.unavailable("exec_relay", case, name, "requests", "lower", str(error))
                failed = True
                continue
            top = ", ".join(f"{request} {n / count / repeat:.1f}"
                            for request, n in by_name.most_common(6))
            results.record("exec_relay", case, name, "requests", "lower", per_op,
                           note=f"server and its child; most: {top}")
            results.record("exec_relay", case + ", server process only", name, "requests",
                           "lower", own)
    results.write(json_path)
    return 1 if failed else 0
