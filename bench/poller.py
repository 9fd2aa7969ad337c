"""Poller benchmarks: the cost of arming and cancelling a wait, and of a poll as sockets grow.

``arm_cancel``: 500 socketpairs; every socket armed for reading, then every wait cancelled and
the cancellation dequeued (the method of trio#52, which measured trio's AFD backend at 55.7 µs
per wait against 19.8 µs for select). Subjects: ``AfdPoller`` (register + unregister + the poll
that dequeues the cancellations), trio 0.35 (``wait_readable`` tasks in a nursery, then cancel
the nursery) and ``select.select`` on the same 500 sockets (one call) for reference.

``scale``: 10, 1,000 and 10,000 registered sockets, 10 of them made readable in each round;
a round is: 10 peers send a byte, poll until the 10 are reported, read them. ``select`` can
only take part up to its 512-socket ceiling.

``group_size`` (``--group-sizes``): arm+cancel and the 1,000-socket round for several sockets-
per-helper-handle values, to choose :data:`afd.GROUP_SIZE`.

Run: ``tools/winpy -m bench.poller`` (``make bench`` runs every benchmark). Under Wine, trio
needs a patch, applied here and announced: its start-up check asks for
``SIO_BSP_HANDLE_SELECT``, which Wine 8.0 rejects; the patch answers with ``SIO_BASE_HANDLE``.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from afd import GROUP_SIZE, AfdPoller, PollEvents

from .common import Results, bounded, under_wine
from .trio_support import import_trio

P = PollEvents
ARM_CANCEL_PAIRS = 500
SCALE_SIZES = (10, 1000, 10_000)
ACTIVE = 10
SELECT_CEILING = 512


def socketpairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    pairs = []
    for _ in range(count):
        first, second = socket.socketpair()
        first.setblocking(False)
        second.setblocking(False)
        pairs.append((first, second))
    return pairs


def close_all(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    for first, second in pairs:
        first.close()
        second.close()


def _drain_cancellations(poller: AfdPoller) -> None:
    """Dequeue until the kernel owns no poll of ``poller`` (the cancelled ones included)."""
    while poller.outstanding_polls:
        poller.poll(timeout=0)


# -- arm + cancel ------------------------------------------------------------------------------
def afd_arm_cancel(sockets: list[socket.socket], group_size: int = GROUP_SIZE) -> float:
    """µs per socket: register (issues a poll), unregister (cancels it), dequeue the
    cancellations."""
    with AfdPoller(group_size=group_size) as poller:
        started = time.perf_counter()
        for sock in sockets:
            poller.register(sock, P.IN)
        for sock in sockets:
            poller.unregister(sock)
        _drain_cancellations(poller)
        elapsed = time.perf_counter() - started
    return elapsed / len(sockets) * 1e6


def trio_arm_cancel(sockets: list[socket.socket]) -> float:
    trio = import_trio()

    async def main() -> float:
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for sock in sockets:
                nursery.start_soon(trio.lowlevel.wait_readable, sock)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        return time.perf_counter() - started

    elapsed: float = trio.run(main)
    return elapsed / len(sockets) * 1e6


def select_arm_cancel(sockets: list[socket.socket]) -> float:
    import select

    started = time.perf_counter()
    select.select(sockets, [], [], 0)
    return (time.perf_counter() - started) / len(sockets) * 1e6


def bench_arm_cancel(results: Results, runs: int) -> None:
    pairs = socketpairs(ARM_CANCEL_PAIRS)
    sockets = [sock for pair in pairs for sock in pair][:ARM_CANCEL_PAIRS]
    case = f"{ARM_CANCEL_PAIRS} sockets"
    try:
        results.measure("arm_cancel", case, "AfdPoller", "µs/socket", "lower",
                        lambda: afd_arm_cancel(sockets), runs)
        if import_trio(optional=True) is not None:
            results.measure("arm_cancel", case, "trio", "µs/socket", "lower",
                            lambda: trio_arm_cancel(sockets), runs,
                            note="patched to SIO_BASE_HANDLE under Wine" if under_wine() else "")
        else:
            results.unavailable("arm_cancel", case, "trio", "µs/socket", "lower",
                                "trio is not installed (tools/install-bench.sh)")
        results.measure("arm_cancel", case, "select", "µs/socket", "lower",
                        lambda: select_arm_cancel(sockets), runs, reference=True,
                        note="one select() call on all of them, for scale")
        results.ratios("arm_cancel", case, "AfdPoller", peers=["trio"])
    finally:
        close_all(pairs)


# -- poll cost as the registered set grows -----------------------------------------------------
def _watched_and_active(pairs: list[tuple[socket.socket, socket.socket]], total: int
                        ) -> tuple[list[socket.socket], list[socket.socket],
                                   dict[socket.socket, socket.socket]]:
    watched = [sock for pair in pairs for sock in pair][:total]
    peer_of = {}
    for first, second in pairs:
        peer_of[first] = second
        peer_of[second] = first
    active = watched[:: max(1, len(watched) // ACTIVE)][:ACTIVE]
    return watched, active, peer_of


def _timed_rounds(active: list[socket.socket], peer_of: dict[socket.socket, socket.socket],
                  ready: Callable[[], Iterable[object]], seconds: float,
                  count: int) -> tuple[float, float, int]:
    """Rounds until ``seconds`` or ``count``: each peer of ``active`` sends a byte, ``ready()``
    (one wait returning the ready sockets) is called until all of ``active`` were seen, then
    each reads its byte. Returns (wall seconds, this process's CPU seconds, rounds)."""
    more = bounded(seconds, count)
    done = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    while more(done):
        for sock in active:
            peer_of[sock].send(b"x")
        seen: set[object] = set()
        while len(seen) < len(active):
            seen.update(ready())
        for sock in active:
            sock.recv(16)
        done += 1
    return time.perf_counter() - started, time.process_time() - cpu_started, done


def afd_round_cost(pairs: list[tuple[socket.socket, socket.socket]], total: int,
                   group_size: int = GROUP_SIZE, seconds: float = 2.0,
                   count: int = 300) -> tuple[float, float]:
    """(wall µs, this process's CPU µs) per round with ``total`` registered sockets,
    ``ACTIVE`` of them readable per round."""
    watched, active, peer_of = _watched_and_active(pairs, total)
    with AfdPoller(group_size=group_size) as poller:
        for sock in watched:
            poller.register(sock, P.IN, sock)
        poller.poll(timeout=0)
        elapsed, cpu, done = _timed_rounds(
            active, peer_of, lambda: [data for data, _ in poller.poll(timeout=5)],
            seconds, count)
        for sock in watched:
            poller.unregister(sock)
        _drain_cancellations(poller)
    return elapsed / done * 1e6, cpu / done * 1e6


def trio_round_cost(pairs: list[tuple[socket.socket, socket.socket]], total: int,
                    seconds: float = 2.0, count: int = 300) -> float:
    """The same rounds with trio: one ``wait_readable`` task per registered socket."""
    trio = import_trio()
    watched, active, peer_of = _watched_and_active(pairs, total)

    async def main() -> float:
        state: dict[str, Any] = {"got": 0, "event": trio.Event()}

        async def watcher(sock: socket.socket) -> None:
            while True:
                await trio.lowlevel.wait_readable(sock)
                sock.recv(16)
                state["got"] += 1
                if state["got"] == len(active):
                    state["event"].set()

        async with trio.open_nursery() as nursery:
            for sock in watched:
                nursery.start_soon(watcher, sock)
            await trio.testing.wait_all_tasks_blocked()
            more = bounded(seconds, count)
            done = 0
            started = time.perf_counter()
            while more(done):
                state["got"], state["event"] = 0, trio.Event()
                for sock in active:
                    peer_of[sock].send(b"x")
                await state["event"].wait()
                done += 1
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel()
        return elapsed / done * 1e6

    result: float = trio.run(main)
    return result


def select_round_cost(pairs: list[tuple[socket.socket, socket.socket]], total: int,
                      seconds: float = 2.0, count: int = 300) -> float:
    watched, active, peer_of = _watched_and_active(pairs, total)
    with selectors.SelectSelector() as selector:
        for sock in watched:
            selector.register(sock, selectors.EVENT_READ, sock)
        elapsed, _, done = _timed_rounds(
            active, peer_of, lambda: [key.data for key, _ in selector.select(timeout=5)],
            seconds, count)
    return elapsed / done * 1e6


def bench_scale(results: Results, runs: int) -> None:
    pairs = socketpairs(max(SCALE_SIZES) // 2)
    have_trio = import_trio(optional=True) is not None
    try:
        for total in SCALE_SIZES:
            case = f"{total} registered, {ACTIVE} active"
            cpu: list[float] = []

            def ours(total: int = total, cpu: list[float] = cpu) -> float:
                wall, process = afd_round_cost(pairs, total)
                cpu.append(process)
                return wall

            results.measure("scale", case, "AfdPoller", "µs/round", "lower", ours, runs)
            results.record("scale", case, "AfdPoller (this process's CPU)", "µs/round", "lower",
                           cpu, reference=True,
                           note="excludes wineserver's work for this process")
            if have_trio:
                results.measure("scale", case, "trio", "µs/round", "lower",
                                lambda total=total: trio_round_cost(pairs, total), runs)  # type: ignore[misc]
            if total <= SELECT_CEILING:
                results.measure("scale", case, "select", "µs/round", "lower",
                                lambda total=total: select_round_cost(pairs, total), runs)  # type: ignore[misc]
            else:
                results.unavailable("scale", case, "select", "µs/round", "lower",
                                    f"select() takes at most {SELECT_CEILING} sockets")
            results.ratios("scale", case, "AfdPoller", peers=["trio", "select"])
        for subject in ("AfdPoller", "AfdPoller (this process's CPU)", "trio"):
            figures = [f for f in results.figures if f.benchmark == "scale"
                       and f.subject == subject and f.values]
            if len(figures) == len(SCALE_SIZES):
                growth = figures[-1].median / figures[0].median
                print(f"  ratio scale: {subject} at {SCALE_SIZES[-1]} registered costs "
                      f"{growth:.2f}x its cost at {SCALE_SIZES[0]} (target <= 2)", flush=True)
    finally:
        close_all(pairs)


# -- group size ---------------------------------------------------------------------------------
def bench_group_sizes(results: Results, runs: int, sizes: Sequence[int]) -> None:
    pairs = socketpairs(1000)
    sockets = [sock for pair in pairs for sock in pair]
    try:
        for size in sizes:
            results.measure("group_size", "arm+cancel, 1000 sockets", f"{size} per helper",
                            "µs/socket", "lower",
                            lambda size=size: afd_arm_cancel(sockets[:1000], size), runs)  # type: ignore[misc]
        for size in sizes:
            results.measure("group_size", f"2000 registered, {ACTIVE} active",
                            f"{size} per helper", "µs/round", "lower",
                            lambda size=size: afd_round_cost(pairs, 2000, size)[0], runs)  # type: ignore[misc]
    finally:
        close_all(pairs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.poller", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--only", choices=["arm_cancel", "scale", "group_size"], action="append",
                        help="run only these benchmarks (default: arm_cancel and scale)")
    parser.add_argument("--group-sizes", default="1,8,32,128,512",
                        help="sockets per helper handle for group_size (default %(default)s)")
    parser.add_argument("--json", help="write the raw results to this file")
    arguments = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if sys.platform != "win32":
        print("bench.poller needs Windows (or Wine): run it with tools/winpy -m bench.poller")
        return 2
    chosen = arguments.only or ["arm_cancel", "scale"]
    results = Results("poller")
    if "arm_cancel" in chosen:
        bench_arm_cancel(results, arguments.runs)
    if "scale" in chosen:
        bench_scale(results, arguments.runs)
    if "group_size" in chosen:
        sizes = [int(size) for size in arguments.group_sizes.split(",")]
        bench_group_sizes(results, arguments.runs, sizes)
    results.write(arguments.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
