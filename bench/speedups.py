"""Benchmark: the pure-ctypes implementation against the cffi speedups, in one run.

    NTAFD_WINE_PYTHONPATH='Z:\\...\\.cache\\speedups\\optimized' tools/winpy -m bench.speedups
    tools/winpy -m bench.speedups --profile echo  # cProfile one workload, the loaded impl.

The two implementations are measured alternately in this one process (``use`` switches them;
under Wine the machine's load drifts, so alternation and medians matter), and it reports:

- ``dequeue``: completions dequeued per second — packets posted beforehand (posting not timed),
  then drained with ``CompletionPort.dequeue`` in batches of 128; with and without an operation
  behind each packet;
- ``decode``: the same dequeue code without the kernel call (128 entries as the kernel writes
  them, decoded into ``Completion``s; with and without operations): what the implementations
  differ in, and what the dequeue loop costs where the kernel call is cheap (Windows);
- ``arm+cancel``: the cost per socket of ``AfdPoller.register`` (issues a poll) then
  ``unregister`` (cancels it) and draining the cancellations, over 500 socketpairs;
- ``echo``: round trips per second of 16 connections echoing 64-byte messages through one
  ``AfdSelector`` (client and server sides in one thread, 127.0.0.1 only).

``arm+cancel`` and ``echo`` are also given per second of this process's CPU time (``CPU``): it
leaves out the waits for wineserver and for the other programs on the cores, so it is steadier
under Wine, and closer to what the library itself costs.

Every loop is bounded in time and in count. Under Wine the absolute figures mean little (every NT
call is a round trip to wineserver, and two cores are shared): compare the ratios.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import selectors
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

SECONDS = float(os.environ.get("NTAFD_BENCH_SECONDS", "2.0"))
"""Time bound of each measured loop (each also has a count bound)."""

if TYPE_CHECKING:
    from ntdll.speedups import NativeCalls

    from .common import Better

_current: NativeCalls | None = None
"""The implementation :func:`use` selected (``None``: pure ctypes)."""


def bench_dequeue(with_operations: bool) -> float:
    """Completions dequeued per second."""
    from iocp import CompletionPort, Operation
    from ntdll import functions as nt

    batch_packets = 5_000
    dequeued = 0
    elapsed = 0.0
    deadline = time.monotonic() + SECONDS
    with CompletionPort() as port:
        for _round in range(50):
            if time.monotonic() >= deadline:
                break
            if with_operations:
                operations = [Operation(tag=i) for i in range(batch_packets)]
                for operation in operations:
                    port.post(key=1, operation=operation)
            else:
                for i in range(batch_packets):
                    nt.NtSetIoCompletion(port.handle, 1, 0, 0, i)
            remaining = batch_packets
            start = time.perf_counter()
            while remaining:
                got = port.dequeue(timeout=0, max_entries=128)
                if not got:
                    raise RuntimeError("lost packets")
                remaining -= len(got)
            elapsed += time.perf_counter() - start
            dequeued += batch_packets
    return dequeued / elapsed


def bench_decode(with_operations: bool) -> float:
    """Completions decoded per second, no kernel call: 128 entries as NtRemoveIoCompletionEx
    writes them, turned into ``Completion`` objects (and, with operations, each handed to its
    pending operation) by the dequeue's own code; only that code is timed. This is the part of
    the dequeue loop the implementations differ in; under Wine the kernel call itself costs a
    wineserver round trip per entry and hides it."""
    from iocp import PACKET, Completion, CompletionPort, Operation
    from iocp.port import decode_entries
    from ntdll.structures import FILE_IO_COMPLETION_INFORMATION

    count = 128
    entries = (FILE_IO_COMPLETION_INFORMATION * count)()
    operations = [Operation(tag=index) for index in range(count)]
    for index, entry in enumerate(entries):
        entry.KeyContext = 1
        entry.IoStatusBlock.Status = 0
        entry.IoStatusBlock.Information = index
        if with_operations:
            entry.ApcContext = operations[index].apc_context
    native = _current
    decoded = 0
    elapsed = 0.0
    with CompletionPort() as port:
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline and decoded < 100_000_000:
            for _ in range(20):
                if with_operations:  # issued again, as the kernel would have them (not timed)
                    for operation in operations:
                        port.start(operation, 0, lambda _overlapped: PACKET)
                start = time.perf_counter()
                batch: list[Completion] = []
                if native is None:
                    port._hand_over(decode_entries(entries, count), batch, recovering=False)
                else:
                    port._hand_over(native.decode_completions(entries, count), batch,
                                    recovering=False)
                elapsed += time.perf_counter() - start
                decoded += len(batch)
            if with_operations:
                assert batch[-1].operation is operations[-1] and not port.pending_count
    return decoded / elapsed


def bench_arm_cancel(pairs: int = 500) -> dict[str, float]:
    """Microseconds per socket for register (arm) + unregister (cancel) + dequeuing the
    cancellation: elapsed, and this process's CPU time (which leaves out the time spent
    waiting for wineserver and for the other programs sharing the cores)."""
    from afd import AfdPoller, PollEvents

    sockets: list[socket.socket] = []
    try:
        for _ in range(pairs):
            sockets.extend(socket.socketpair())
        cycles = 0
        elapsed = 0.0
        cpu = 0.0
        deadline = time.monotonic() + SECONDS
        with AfdPoller() as poller:
            for _round in range(100):
                if time.monotonic() >= deadline:
                    break
                start, start_cpu = time.perf_counter(), time.process_time()
                for sock in sockets:
                    poller.register(sock, PollEvents.IN)
                for sock in sockets:
                    poller.unregister(sock)
                for _ in range(1000):  # drain the cancellations
                    poller.poll(timeout=0)
                    if not poller._port.pending_count:
                        break
                elapsed += time.perf_counter() - start
                cpu += time.process_time() - start_cpu
                cycles += len(sockets)
        return {"arm+cancel": elapsed / cycles * 1e6, "arm+cancel CPU": cpu / cycles * 1e6}
    finally:
        for sock in sockets:
            sock.close()


def bench_echo(connections: int = 16, message: bytes = b"x" * 64) -> dict[str, float]:
    """Round trips per second through one AfdSelector (clients and servers in one thread):
    per elapsed second, and per second of this process's CPU time."""
    from afd import AfdSelector

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(connections)
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        for _ in range(connections):
            client = socket.create_connection(listener.getsockname()[:2], timeout=10)
            server, _ = listener.accept()
            client.setblocking(False)
            server.setblocking(False)
            pairs.append((client, server))
        round_trips = 0
        with AfdSelector() as selector:
            for client, server in pairs:
                selector.register(server, selectors.EVENT_READ, "server")
                selector.register(client, selectors.EVENT_READ, "client")
                client.send(message)
            start, start_cpu = time.perf_counter(), time.process_time()
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline and round_trips < 1_000_000:
                ready = selector.select(timeout=5.0)
                if not ready:
                    raise RuntimeError("echo stalled")
                for key, _events in ready:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        continue
                    if key.data == "server":
                        sock.send(data)  # small: the send buffer always has room
                    else:
                        round_trips += 1
                        sock.send(message)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - start_cpu
        return {"echo": round_trips / elapsed, "echo CPU": round_trips / cpu}
    finally:
        for client, server in pairs:
            client.close()
            server.close()
        listener.close()


WORKLOADS: dict[str, Callable[[], float | dict[str, float]]] = {
    "dequeue": lambda: bench_dequeue(False),
    "dequeue-ops": lambda: bench_dequeue(True),
    "decode": lambda: bench_decode(False),
    "decode-ops": lambda: bench_decode(True),
    "arm+cancel": bench_arm_cancel,
    "echo": bench_echo,
}
UNITS = {"dequeue": "completions/s", "dequeue-ops": "completions/s", "decode": "completions/s",
         "decode-ops": "completions/s", "arm+cancel": "µs/socket", "arm+cancel CPU": "µs/socket",
         "echo": "round trips/s", "echo CPU": "round trips/s"}
"""Each figure's unit; a figure ending in ``CPU`` is per this process's CPU time."""
HIGHER_IS_BETTER = {name: not unit.startswith("µs") for name, unit in UNITS.items()}


def run_workload(name: str) -> dict[str, float]:
    """One bounded run of a workload: its figures by name."""
    value = WORKLOADS[name]()
    return value if isinstance(value, dict) else {name: value}


def use(implementation: str) -> None:
    """Switch this process between the implementations, for interleaved measurements.

    The package picks one at import; ``iocp.port`` and ``afd.helper`` are the only modules that
    call the speedups, through their module-level ``_native``.
    """
    import afd.helper
    import iocp.port
    from ntdll import speedups

    global _current
    _current = speedups.native if implementation != "ctypes" else None
    iocp.port._native = _current  # type: ignore[attr-defined]
    afd.helper._native = _current  # type: ignore[attr-defined]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> int:
    global SECONDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(WORKLOADS), help="cProfile one workload")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternations of the two implementations per workload")
    parser.add_argument("--seconds", type=float, default=SECONDS,
                        help="time bound of each measured loop")
    parser.add_argument("--json", help="also write the figures to this file (make bench)")
    args = parser.parse_args()
    SECONDS = args.seconds
    from ntdll import speedups

    use(speedups.IMPLEMENTATION)
    if args.profile:
        print(f"implementation: {speedups.IMPLEMENTATION}")
        profiler = cProfile.Profile()
        values = profiler.runcall(run_workload, args.profile)
        for figure, value in values.items():
            print(f"{figure}: {value:,.1f} {UNITS[figure]}")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return 0
    fast = speedups.IMPLEMENTATION
    if fast == "ctypes":
        print(f"the speedups are not loaded ({speedups.LOAD_ERROR}): build them with "
              "tools/build-speedups.sh and put the build on the path")
        return 1
    from .common import Results

    results = Results("speedups")
    ours = f"cffi ({fast.removeprefix('cffi-')})"  # bench.report's name for our subject
    print(f"{args.rounds} alternations per workload, {SECONDS:g} s each; medians "
          f"[min-max]; ratio = {fast} over ctypes (>1: faster)")
    print(f"{'figure':<15} {'unit':<14} {'ctypes':>26} {fast:>26}  ratio")
    for name in WORKLOADS:
        figures: dict[str, dict[str, list[float]]] = {}
        for _round in range(args.rounds):
            for implementation in ("ctypes", fast):
                use(implementation)
                for figure, value in run_workload(name).items():
                    figures.setdefault(figure, {"ctypes": [], fast: []})
                    figures[figure][implementation].append(value)
        use(fast)
        for figure, runs in figures.items():
            a, b = median(runs["ctypes"]), median(runs[fast])
            ratio = b / a if HIGHER_IS_BETTER[figure] else a / b
            cells = [f"{median(v):,.1f} [{min(v):,.0f}-{max(v):,.0f}]" for v in runs.values()]
            print(f"{figure:<15} {UNITS[figure]:<14} {cells[0]:>26} {cells[1]:>26}  "
                  f"{ratio:4.2f}x", flush=True)
            better: Better = "higher" if HIGHER_IS_BETTER[figure] else "lower"
            if args.json:
                results.record("speedups", figure, "ctypes", UNITS[figure], better,
                               runs["ctypes"])
                results.record("speedups", figure, ours, UNITS[figure], better, runs[fast])
    results.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
