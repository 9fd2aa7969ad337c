"""TCP echo on 127.0.0.1: ntafd's ``AfdEventLoop`` against asyncio's ``SelectorEventLoop`` on
``AfdSelector`` (what ``afd.asyncio_loop`` gave before it), asyncio's Proactor loop, asyncio on
``select()`` (SelectSelector), winloop (libuv) and trio (each running its own server and
clients in one loop) and blocking sockets with a thread per connection.

Cases (each figure the median of ``--runs`` runs, every run bounded in time and count; the
subjects of a case run in turn, one run each per round):

- ``ping-pong``: one connection, 64-byte messages, round trips per second;
- ``streaming``: one connection, 64 KiB writes echoed back while the client keeps writing,
  MB/s of echoed data;
- ``1000 connections``: 1,000 clients connect at once and do 3 round trips each, seconds for
  all of it, until the server has seen every client's end too (its handlers, threads or tasks
  all finished: a loop that lets the clients finish first has not done the work yet).
  ``select()`` cannot take 2,000 sockets: that figure is its error;
- ``subprocess cat``: 16 MiB written to a Python ``cat`` child's stdin while its stdout is
  read, MB/s (the loops with subprocesses, and ``subprocess.Popen`` with two threads). The clock
  starts once a first 64 KiB block has come back: the child's start-up (~0.09 s under Wine, a
  quarter of a run: ACTIVE_KB SP9) is spawning, not echoing.

``--in-loop SUBJECT --round-trips N`` makes N ping-pong round trips with client and server in
one asyncio subject's loop and exits (``bench/echo_requests.py --in-loop`` counts its requests).
``--serve-once SUBJECT`` serves one echo connection and exits (it prints the port first):
``bench/echo_requests.py`` drives it from Linux under ``wine-requests`` to count wineserver
requests per round trip.

asyncio subjects use the streams API (what applications use). Run: ``tools/winpy -m
bench.echo`` (``make bench`` runs every benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import math
import os
import selectors
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .common import Results, under_wine
from .trio_support import import_trio

MESSAGE = b"m" * 64
CHUNK = 64 * 1024
PING_PONG_SECONDS = 2.0
PING_PONG_MAX = 50_000
STREAM_BYTES = 16 * 1024 * 1024
STREAM_SECONDS = 10.0
CONNECTIONS = 1000
ROUND_TRIPS = 3
OURS = "AfdEventLoop"
SUBPROCESS_BYTES = 16 * 1024 * 1024
HANG_REPORT_SECONDS = 300
"""A run still going after this long prints every thread's stack (and again as often)."""
CAT = "import shutil, sys; shutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer, 65536)"


# -- asyncio ---------------------------------------------------------------------------------
_handlers: set[asyncio.Task[Any]] = set()
"""The asyncio servers' connection handlers still running (Python 3.11's ``Server`` does not
wait for them)."""


async def _asyncio_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    task = asyncio.current_task()
    assert task is not None
    _handlers.add(task)
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        _handlers.discard(task)


async def _handlers_finished(timeout: float = 60.0) -> None:
    """Wait, after the timing, until this loop's server handlers saw their clients' end, so
    that no case closes its loop under pending tasks. Every asyncio case calls this before it
    returns: a handler left pending when its loop closed never finishes, and before the
    eighth session such leftovers of the ping-pong and streaming cases made every later "1000
    connections" run wait its full timeout on them (ACTIVE_KB HB6)."""
    loop = asyncio.get_running_loop()
    for task in [task for task in _handlers if task.get_loop() is not loop]:
        _handlers.discard(task)  # another loop's: that loop is closed, it cannot finish
    if _handlers:
        started = time.perf_counter()
        await asyncio.wait(set(_handlers), timeout=timeout)
        if _handlers:  # said, not hidden
            print(f"# {len(_handlers)} server handlers saw no end of their client within "
                  f"{time.perf_counter() - started:.0f} s (ACTIVE_KB HB5, HB6)",
                  file=sys.stderr, flush=True)


async def _asyncio_server() -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(_asyncio_echo, "127.0.0.1", 0, backlog=2048)
    return server, server.sockets[0].getsockname()[1]


async def _asyncio_ping_pong(most: int = PING_PONG_MAX,
                             seconds: float = PING_PONG_SECONDS) -> float:
    server, port = await _asyncio_server()
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        done = 0
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        while done < most and time.perf_counter() < deadline:
            writer.write(MESSAGE)
            await reader.readexactly(len(MESSAGE))
            done += 1
        elapsed = time.perf_counter() - started
        writer.close()
        await writer.wait_closed()
        await _handlers_finished()
    return done / elapsed


async def _asyncio_streaming() -> float:
    server, port = await _asyncio_server()
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        chunk = b"s" * CHUNK
        deadline = time.perf_counter() + STREAM_SECONDS
        started = time.perf_counter()

        async def send() -> int:
            sent = 0
            while sent < STREAM_BYTES and time.perf_counter() < deadline:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            writer.write_eof()
            return sent

        async def receive() -> int:
            received = 0
            while data := await reader.read(CHUNK):
                received += len(data)
            return received

        sent, received = await asyncio.gather(send(), receive())
        elapsed = time.perf_counter() - started
        assert received == sent, (received, sent)
        writer.close()
        await writer.wait_closed()
        await _handlers_finished()
    return received / elapsed / 1e6


async def _asyncio_many() -> float:
    server, port = await _asyncio_server()
    async with server:
        started = time.perf_counter()

        async def client() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(ROUND_TRIPS):
                writer.write(MESSAGE)
                await reader.readexactly(len(MESSAGE))
            writer.close()
            await writer.wait_closed()

        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(CONNECTIONS))), 120)
        await _handlers_finished()  # the server's side of the work is part of the figure
        elapsed = time.perf_counter() - started
        return elapsed


async def _asyncio_subprocess_cat() -> float:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CAT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout
    chunk = b"c" * CHUNK
    # One block there and back before the clock starts: the child's start-up is not echo time.
    stdin.write(chunk)
    await stdin.drain()
    await asyncio.wait_for(stdout.readexactly(CHUNK), 120)
    started = time.perf_counter()

    async def send() -> None:
        for _ in range(SUBPROCESS_BYTES // CHUNK):
            stdin.write(chunk)
            await stdin.drain()
        stdin.close()

    async def receive() -> int:
        received = 0
        while data := await stdout.read(CHUNK):
            received += len(data)
        return received

    _, received = await asyncio.wait_for(asyncio.gather(send(), receive()), 120)
    elapsed = time.perf_counter() - started
    assert received == SUBPROCESS_BYTES, received
    await process.wait()
    return received / elapsed / 1e6


def _threads_subprocess_cat() -> float:
    """The same with ``subprocess.Popen`` and a writer thread (the reader is this thread)."""
    import subprocess
    import threading

    process = subprocess.Popen([sys.executable, "-c", CAT], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout
    chunk = b"c" * CHUNK
    stdin.write(chunk)  # one block there and back first, as the asyncio subjects do
    stdin.flush()
    warm = 0
    while warm < CHUNK:
        data = os.read(stdout.fileno(), CHUNK - warm)
        assert data, "the child ended before echoing its first block"
        warm += len(data)
    started = time.perf_counter()

    def send() -> None:
        for _ in range(SUBPROCESS_BYTES // CHUNK):
            stdin.write(chunk)
        stdin.close()

    writer = threading.Thread(target=send, daemon=True)
    writer.start()
    received = 0
    while data := os.read(stdout.fileno(), CHUNK):
        received += len(data)
    writer.join(60)
    elapsed = time.perf_counter() - started
    assert received == SUBPROCESS_BYTES, received
    process.wait(60)
    return received / elapsed / 1e6


def _asyncio_runner(make_loop: Callable[[], asyncio.AbstractEventLoop]
                    ) -> Callable[[Callable[[], Any]], float]:
    def run(body: Callable[[], Any]) -> float:
        loop = make_loop()
        try:
            result: float = loop.run_until_complete(body())
            return result
        finally:
            loop.close()
    return run


# -- trio ------------------------------------------------------------------------------------
def _trio_case(case: str) -> float:
    trio = import_trio()

    handlers = [0]  # echo handlers running

    async def echo(stream: Any) -> None:
        handlers[0] += 1
        try:
            while data := await stream.receive_some(CHUNK):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass
        finally:
            handlers[0] -= 1
            await stream.aclose()

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                lambda task_status: trio.serve_tcp(echo, 0, host="127.0.0.1", backlog=2048,
                                                   task_status=task_status))
            port = listeners[0].socket.getsockname()[1]
            result = await {"ping-pong": ping_pong, "streaming": streaming,
                            "1000 connections": many}[case](port)
            nursery.cancel_scope.cancel()
        return result

    async def receive_exactly(stream: Any, size: int) -> None:
        got = 0
        while got < size:
            got += len(await stream.receive_some(size - got))

    async def ping_pong(port: int) -> float:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        done = 0
        deadline = time.perf_counter() + PING_PONG_SECONDS
        started = time.perf_counter()
        while done < PING_PONG_MAX and time.perf_counter() < deadline:
            await stream.send_all(MESSAGE)
            await receive_exactly(stream, len(MESSAGE))
            done += 1
        elapsed = time.perf_counter() - started
        await stream.aclose()
        return done / elapsed

    async def streaming(port: int) -> float:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        chunk = b"s" * CHUNK
        totals = {"sent": 0, "received": 0}
        deadline = time.perf_counter() + STREAM_SECONDS
        started = time.perf_counter()

        async def send() -> None:
            while totals["sent"] < STREAM_BYTES and time.perf_counter() < deadline:
                await stream.send_all(chunk)
                totals["sent"] += len(chunk)
            await stream.send_eof()

        async with trio.open_nursery() as inner:
            inner.start_soon(send)
            while data := await stream.receive_some(CHUNK):
                totals["received"] += len(data)
        elapsed = time.perf_counter() - started
        assert totals["received"] == totals["sent"], totals
        await stream.aclose()
        return totals["received"] / elapsed / 1e6

    async def many(port: int) -> float:
        started = time.perf_counter()

        async def client() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            for _ in range(ROUND_TRIPS):
                await stream.send_all(MESSAGE)
                await receive_exactly(stream, len(MESSAGE))
            await stream.aclose()

        with trio.fail_after(120):
            async with trio.open_nursery() as clients:
                for _ in range(CONNECTIONS):
                    clients.start_soon(client)
            while handlers[0]:  # until the server saw every client's end
                await trio.sleep(0.001)
        return time.perf_counter() - started

    result: float = trio.run(main)
    return result


# -- blocking threads ------------------------------------------------------------------------
def _threads_case(case: str) -> float:
    """The same cases with blocking sockets: one server thread per connection (and client
    threads where a client needs more than one)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(2048)
    address = listener.getsockname()
    listener.settimeout(60)
    workers: list[threading.Thread] = []

    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(CHUNK):
                    conn.sendall(data)
            except OSError:
                pass

    def accept(count: int) -> None:
        for _ in range(count):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(60)
            worker = threading.Thread(target=echo, args=(conn,), daemon=True)
            worker.start()
            workers.append(worker)

    def receive_exactly(sock: socket.socket, size: int) -> None:
        got = 0
        while got < size:
            chunk = sock.recv(size - got)
            if not chunk:
                raise ConnectionError("the echo server closed early")
            got += len(chunk)

    connections = CONNECTIONS if case == "1000 connections" else 1
    acceptor = threading.Thread(target=accept, args=(connections,), daemon=True)
    acceptor.start()
    try:
        if case == "ping-pong":
            with socket.create_connection(address, timeout=60) as sock:
                done = 0
                deadline = time.perf_counter() + PING_PONG_SECONDS
                started = time.perf_counter()
                while done < PING_PONG_MAX and time.perf_counter() < deadline:
                    sock.sendall(MESSAGE)
                    receive_exactly(sock, len(MESSAGE))
                    done += 1
                return done / (time.perf_counter() - started)
        if case == "streaming":
            with socket.create_connection(address, timeout=60) as sock:
                chunk = b"s" * CHUNK
                sent = [0]
                deadline = time.perf_counter() + STREAM_SECONDS
                started = time.perf_counter()

                def send() -> None:
                    while sent[0] < STREAM_BYTES and time.perf_counter() < deadline:
                        sock.sendall(chunk)
                        sent[0] += len(chunk)
                    sock.shutdown(socket.SHUT_WR)

                sender = threading.Thread(target=send, daemon=True)
                sender.start()
                received = 0
                while data := sock.recv(CHUNK):
                    received += len(data)
                sender.join(60)
                assert received == sent[0], (received, sent[0])
                return received / (time.perf_counter() - started) / 1e6
        errors: list[BaseException] = []

        def client() -> None:
            try:
                with socket.create_connection(address, timeout=60) as sock:
                    for _ in range(ROUND_TRIPS):
                        sock.sendall(MESSAGE)
                        receive_exactly(sock, len(MESSAGE))
            except BaseException as error:
                errors.append(error)

        started = time.perf_counter()
        clients = [threading.Thread(target=client, daemon=True) for _ in range(CONNECTIONS)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(120)
        if errors:
            raise errors[0]
        acceptor.join(60)
        for worker in workers:  # until the server saw every client's end
            worker.join(60)
        return time.perf_counter() - started
    finally:
        listener.close()
        acceptor.join(60)
        for worker in workers:
            worker.join(60)


# -- driver ----------------------------------------------------------------------------------
CASES: dict[str, tuple[str, str, Any]] = {
    "ping-pong": ("round trips/s", "higher", _asyncio_ping_pong),
    "streaming": ("MB/s", "higher", _asyncio_streaming),
    "1000 connections": ("s", "lower", _asyncio_many),
    "subprocess cat": ("MB/s", "higher", _asyncio_subprocess_cat),
}
NO_SUBPROCESSES = ("asyncio+AfdSelector", "asyncio SelectSelector")


def _winloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import winloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = winloop.new_event_loop
    return factory


def asyncio_subjects() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    from afd import AfdSelector
    from afd.asyncio_loop import new_event_loop

    subjects: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        OURS: new_event_loop,
        "asyncio+AfdSelector": lambda: asyncio.SelectorEventLoop(AfdSelector()),
        "asyncio Proactor": asyncio.ProactorEventLoop,  # type: ignore[attr-defined,unused-ignore]
        "asyncio SelectSelector": lambda: asyncio.SelectorEventLoop(selectors.SelectSelector()),
    }
    winloop = _winloop_factory()
    if winloop is not None:
        subjects["winloop"] = winloop
    return subjects


def _case_subjects(case: str, results: Results
                   ) -> list[tuple[str, Callable[[], float], str]]:
    """The subjects of one case as ``(name, one run, note)``; those that cannot run it are
    recorded as unavailable here."""
    unit, better, body = CASES[case]
    subjects: list[tuple[str, Callable[[], float], str]] = []
    for subject, make_loop in asyncio_subjects().items():
        runner = _asyncio_runner(make_loop)
        if case == "subprocess cat" and subject in NO_SUBPROCESSES:
            results.unavailable("echo", case, subject, unit, better,  # type: ignore[arg-type]
                                "no subprocesses (a selector loop on Windows)")
            continue
        if case == "1000 connections" and subject == "asyncio SelectSelector":
            try:
                runner(body)
            except ValueError as error:  # select() on more than 512 sockets
                results.unavailable("echo", case, subject, unit, better,  # type: ignore[arg-type]
                                    f"fails: {error}")
                continue
        subjects.append(
            (subject, lambda runner=runner, body=body: runner(body), ""))  # type: ignore[misc]
    if case == "subprocess cat":
        subjects.append(("blocking threads", _threads_subprocess_cat,
                         "subprocess.Popen + a writer thread"))
        return subjects
    subjects.append(("blocking threads", lambda: _threads_case(case), "a thread per connection"))
    if import_trio(optional=True) is not None:
        subjects.append(("trio", lambda: _trio_case(case),
                         "patched to SIO_BASE_HANDLE under Wine" if under_wine() else ""))
    else:
        results.unavailable("echo", case, "trio", unit, better,  # type: ignore[arg-type]
                            "trio is not installed (tools/install-bench.sh)")
    return subjects


def run_all(results: Results, runs: int, cases: Sequence[str]) -> None:
    """Each case's subjects in turn, ``runs`` rounds: one run of every subject per round, so a
    change of machine load over minutes lands on all of them rather than on one."""
    for case in cases:
        unit, better, _ = CASES[case]
        subjects = _case_subjects(case, results)
        values: dict[str, list[float]] = {name: [] for name, _, _ in subjects}
        for _ in range(runs):
            for name, run, _ in subjects:
                # A run takes seconds; one that hangs (seen twice in "1000 connections": ACTIVE_KB
                # state of play, fifth session) prints every thread's stack while it hangs.
                faulthandler.dump_traceback_later(HANG_REPORT_SECONDS, repeat=True)
                try:
                    values[name].append(run())
                finally:
                    faulthandler.cancel_dump_traceback_later()
        for name, _, note in subjects:
            results.record("echo", case, name, unit, better,  # type: ignore[arg-type]
                           values[name], note=note)
        results.ratios("echo", case, OURS)


# -- one connection, for counting wineserver requests ----------------------------------------
def serve_once(subject: str) -> None:
    """Serve one echo connection with ``subject`` (an asyncio subject, ``blocking threads`` or
    ``trio``), printing ``PORT <n>`` first; return when the client closes."""
    if subject == "blocking threads":
        import socket

        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            print(f"PORT {listener.getsockname()[1]}", flush=True)
            conn, _ = listener.accept()
            with conn:
                while data := conn.recv(CHUNK):
                    conn.sendall(data)
        return
    if subject == "trio":
        trio = import_trio()

        async def trio_main() -> None:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            print(f"PORT {listeners[0].socket.getsockname()[1]}", flush=True)
            stream = await listeners[0].accept()
            while data := await stream.receive_some(CHUNK):
                await stream.send_all(data)
            await stream.aclose()
            await listeners[0].aclose()

        trio.run(trio_main)
        return
    make_loop = asyncio_subjects()[subject]

    async def asyncio_main() -> None:
        done = asyncio.get_running_loop().create_future()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _asyncio_echo(reader, writer)
            done.set_result(None)

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await done

    _asyncio_runner(make_loop)(asyncio_main)


def in_loop(subject: str, round_trips: int) -> None:
    """``round_trips`` 64-byte round trips, client and server in ``subject``'s loop."""
    async def body() -> float:
        return await _asyncio_ping_pong(round_trips, math.inf)

    _asyncio_runner(asyncio_subjects()[subject])(body)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--case", choices=list(CASES), action="append",
                        help="run only these cases (default: all)")
    parser.add_argument("--json", help="write the raw results to this file")
    parser.add_argument("--in-loop", metavar="SUBJECT",
                        help="make --round-trips round trips in SUBJECT's loop and exit")
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--serve-once", metavar="SUBJECT",
                        help="serve one echo connection with SUBJECT and exit")
    arguments = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if sys.platform != "win32":
        print("bench.echo compares Windows event loops: run it with tools/winpy -m bench.echo")
        return 2
    if arguments.in_loop:
        in_loop(arguments.in_loop, arguments.round_trips)
        return 0
    if arguments.serve_once:
        serve_once(arguments.serve_once)
        return 0
    results = Results("echo")
    run_all(results, arguments.runs, arguments.case or list(CASES))
    results.write(arguments.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
