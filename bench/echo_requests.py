"""wineserver requests per echo round trip, server side, for every echo subject (Linux side).

For each subject the Windows python runs ``bench.echo --serve-once SUBJECT`` under
``../shared/tools/wine-requests``; this (Linux) process connects from outside Wine and makes
N, then 2N, 64-byte round trips. ``(requests(2N) - requests(N)) / N`` is the server's cost of one
round trip in wineserver round trips: start-up cancels out, and unlike a timing it does not
move with machine load.

``--in-loop`` counts instead ``bench.echo --in-loop SUBJECT``: N, then 2N, round trips with
client and server in one asyncio loop (both ends' requests per round trip; asyncio subjects).

    .cache/venv/bin/python -m bench.echo_requests [--round-trips N] [--in-loop] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

from .common import Results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINE_REQUESTS = os.path.join(os.path.dirname(ROOT), "shared", "tools", "wine-requests")
SUBJECTS = ("AfdEventLoop", "asyncio+AfdSelector", "asyncio Proactor", "asyncio SelectSelector",
            "winloop", "trio", "blocking threads")
MESSAGE = b"r" * 64


def _traced(*echo_args: str) -> subprocess.Popen[str]:
    """``bench.echo ECHO_ARGS`` in the Windows python under ``wine-requests``."""
    site = os.path.join(ROOT, ".cache", "winbench", "site-packages")  # trio, winloop
    env = dict(os.environ, WINEPREFIX=os.path.join(ROOT, ".cache", "wineprefix"),
               NTAFD_WINE_PYTHONPATH="Z:" + site.replace("/", "\\"))
    command = [os.environ.get("NTAFD_WINE_REQUESTS", WINE_REQUESTS), "--top", "1", "--",
               os.path.join(ROOT, "tools", "winpy"), "-m", "bench.echo", *echo_args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _total(subject: str, process: subprocess.Popen[str], output: str) -> int:
    match = re.search(r"wine-requests: (\d+) requests", output)
    if match is None or process.returncode:
        raise RuntimeError(f"{subject}: exit {process.returncode}: {output[-2000:]}")
    return int(match.group(1))


def _count_in_loop(subject: str, round_trips: int) -> int:
    """Total wineserver requests of ``round_trips`` round trips within ``subject``'s loop."""
    process = _traced("--in-loop", subject, "--round-trips", str(round_trips))
    output, _ = process.communicate(timeout=600)
    return _total(subject, process, output)


def _count(subject: str, round_trips: int) -> int:
    """Total wineserver requests of one serve-once run with ``round_trips`` round trips."""
    process = _traced("--serve-once", subject)
    assert process.stdout is not None
    lines: list[str] = []
    port = None
    for line in process.stdout:
        lines.append(line)
        match = re.match(r"PORT (\d+)", line.strip())
        if match:
            port = int(match.group(1))
            break
    if port is None:
        process.wait(60)
        raise RuntimeError(f"{subject}: no port: {''.join(lines)[-2000:]}")
    rest: list[str] = []
    drain = threading.Thread(target=lambda: rest.extend(process.stdout or []), daemon=True)
    drain.start()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for _ in range(round_trips):
            sock.sendall(MESSAGE)
            got = 0
            while got < len(MESSAGE):
                chunk = sock.recv(len(MESSAGE) - got)
                if not chunk:
                    raise RuntimeError(f"{subject}: the server closed early")
                got += len(chunk)
    process.wait(120)
    drain.join(10)
    return _total(subject, process, "".join(lines + rest))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_requests", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=1000, help="N (then 2N)")
    parser.add_argument("--subject", action="append", choices=SUBJECTS,
                        help="only these subjects (default: all)")
    parser.add_argument("--in-loop", action="store_true",
                        help="client and server in one asyncio loop (asyncio subjects)")
    parser.add_argument("--json", help="write the raw results to this file")
    arguments = parser.parse_args(sys.argv[1:] if argv is None else argv)
    results = Results("echo_requests")
    n = arguments.round_trips
    case = "requests per echo round trip"
    count = _count
    subjects = arguments.subject or SUBJECTS
    if arguments.in_loop:
        case += ", client and server in one loop"
        count = _count_in_loop
        subjects = [s for s in subjects if s not in ("trio", "blocking threads")]
    for subject in subjects:
        try:
            per_trip = (count(subject, 2 * n) - count(subject, n)) / n
        except (RuntimeError, OSError) as error:
            results.unavailable("echo_requests", case, subject, "requests", "lower", str(error))
            continue
        results.record("echo_requests", case, subject, "requests", "lower", [per_trip],
                       note=f"(count(2N) - count(N)) / N, N = {n}, "
                       f"{'both ends' if arguments.in_loop else 'server side'}")
    results.ratios("echo_requests", case, "AfdEventLoop")
    results.write(arguments.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
