"""Spawning children from one thread on Linux: ``subprocess.Popen`` against ``os.posix_spawn``.

    .cache/venv/bin/python -m bench.spawn [--children 1000] [--rounds 3]

Each way starts ``--children`` ``cat`` processes the way the exec backend needs them (stdin,
stdout and stderr on fresh pipes, their own session, so the tree can be killed as a group),
all alive at once, then closes their stdin and reaps them. The figure is the time to start
them all (the spawn calls alone), and the whole cycle; rounds alternate the two ways.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover
    raise ImportError("bench.spawn measures POSIX spawning")

import argparse
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence

_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)  # Python ignores them; a child must not


def posix_spawn_child(argv: list[str], *, stdin: int, stdout: int, stderr: int) -> int:
    """The fastest form: PATH searched in C (``posix_spawnp``), one C call, in a new session,
    SIGPIPE/SIGXFSZ back to their defaults. It cannot close inherited descriptors the way
    ``close_fds=True`` does (Python 3.11 exposes no ``addclosefrom_np``)."""
    actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, stdout, 1),
               (os.POSIX_SPAWN_DUP2, stderr, 2)]
    pid: int = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions, setsid=True,
                               setsigdef=_DEFAULT_SIGNALS, setsigmask=())
    return pid


def _pipes() -> tuple[list[int], list[int]]:
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    return [stdin_w, stdout_r], [stdin_r, stdout_w]


def with_popen(argv: list[str]) -> tuple[int, list[int], Callable[[], int]]:
    ours, theirs = _pipes()
    process = subprocess.Popen(argv, stdin=theirs[0], stdout=theirs[1], stderr=theirs[1],
                               start_new_session=True, close_fds=True)
    for fd in theirs:
        os.close(fd)
    return process.pid, ours, process.wait


def with_posix_spawn(argv: list[str]) -> tuple[int, list[int], Callable[[], int]]:
    ours, theirs = _pipes()
    pid = posix_spawn_child(argv, stdin=theirs[0], stdout=theirs[1], stderr=theirs[1])
    for fd in theirs:
        os.close(fd)
    return pid, ours, lambda: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def one_round(way: Callable[[list[str]], tuple[int, list[int], Callable[[], int]]],
              children: int) -> tuple[float, float, float]:
    argv = ["cat"]
    start = time.perf_counter()
    cpu = time.process_time()
    started = [way(argv) for _ in range(children)]
    spawned = time.perf_counter() - start
    spawn_cpu = time.process_time() - cpu
    for pid, fds, _ in started:
        os.killpg(pid, 0)  # each leads its own process group
        for fd in fds:
            os.close(fd)  # cat sees EOF and exits
    for _, _, wait in started:
        if wait() != 0:
            raise RuntimeError("a cat child failed")
    return spawned, time.perf_counter() - start, spawn_cpu


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    ways = {"subprocess.Popen": with_popen, "os.posix_spawn": with_posix_spawn}
    spawn_times: dict[str, list[float]] = {name: [] for name in ways}
    cpu_times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            spawned, cycle, cpu = one_round(way, args.children)
            spawn_times[name].append(spawned)
            cpu_times[name].append(cpu)
            print(f"  {name}: {args.children} spawned in {spawned:.3f} s "
                  f"({spawned / args.children * 1e6:.0f} µs each, this process's CPU "
                  f"{cpu / args.children * 1e6:.0f} µs each), cycle {cycle:.3f} s",
                  flush=True)
    for label, table in (("spawn time", spawn_times), ("spawning CPU", cpu_times)):
        popen = statistics.median(table["subprocess.Popen"])
        spawn = statistics.median(table["os.posix_spawn"])
        print(f"median {label} for {args.children}: subprocess.Popen {popen:.3f} s, "
              f"os.posix_spawn {spawn:.3f} s: posix_spawn is {popen / spawn:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
