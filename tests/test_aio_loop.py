"""AfdEventLoop (issue 12): one completion port for sockets, pipes and children; byte-exact
streams, subprocess pipes both ways, early exits, cancellation without leaks, closing with
operations pending, call_soon_threadsafe and Ctrl-C wake-ups."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import random
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from afd import asyncio_loop

Runner: Any = getattr(asyncio, "Runner", None)  # Python 3.11+ (the Wine legs run 3.11)

pytestmark = pytest.mark.windows

PY = sys.executable
CAT = "import shutil, sys; shutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer, 65536)"


def run(main: Callable[[], Awaitable[Any]], timeout: float = 120) -> Any:
    """Run ``main()`` on a fresh AfdEventLoop the modern way (asyncio.Runner + loop_factory);
    ``timeout`` only bounds a hang."""
    with Runner(loop_factory=asyncio_loop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(main(), timeout))


def random_chunks(data: bytes, rng: random.Random, largest: int = 70_000) -> list[bytes]:
    chunks = []
    position = 0
    while position < len(data):
        size = rng.choice((1, 7, 512, 4096, 65_536, rng.randint(1, largest)))
        chunks.append(data[position:position + size])
        position += size
    return chunks


async def send_chunks(writer: asyncio.StreamWriter, payload: bytes, rng: random.Random,
                      drain_chance: float = 1.0) -> None:
    """Write ``payload`` in random chunks (draining after a share of them), then EOF."""
    for chunk in random_chunks(payload, rng):
        writer.write(chunk)
        if rng.random() < drain_chance:
            await writer.drain()
    await writer.drain()
    writer.write_eof()


async def read_to_end(reader: asyncio.StreamReader, rng: random.Random,
                      sending: Awaitable[None]) -> bytes:
    """Read in random sizes until EOF while ``sending`` runs; return what came."""
    sender = asyncio.ensure_future(sending)
    received = bytearray()
    while data := await reader.read(rng.randint(1, 100_000)):
        received += data
    await sender
    return bytes(received)


def test_the_loop_is_a_selector_loop_on_one_port() -> None:
    """aiodns/psycopg check isinstance(loop, SelectorEventLoop); every request completes on
    loop.port: the AFD helpers' polls (add_reader) and the pipes' reads alike."""
    from afd.aio_loop import AfdEventLoop
    from iocp import create_pipe

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, AfdEventLoop)
        assert isinstance(loop, asyncio.SelectorEventLoop)
        port = loop.port
        poller = loop._selector._poller  # type: ignore[attr-defined]
        assert poller._port is port
        assert poller._groups.port is port  # the helpers it opens are associated with it
        assert all(group.helper.port is port for group in poller._groups._groups)
        read_end, write_end = create_pipe()
        with write_end:
            transport, _ = await loop.connect_read_pipe(asyncio.Protocol, read_end)
            await asyncio.sleep(0)
            pending = port.pending_count
            assert pending >= 2  # the self-pipe's AFD poll and the pipe's read
            transport.close()
        await asyncio.sleep(0.1)

    run(main)


def test_the_loop_port_looks_before_an_empty_poll_and_loses_nothing() -> None:
    """After a zero-timeout dequeue that found nothing, LoopPort looks at the port's depth
    (``has_queued``) before the next one (under Wine: one server request, not two); packets
    posted meanwhile still come out, and a batch larger than asked for is left queued."""
    from afd.aio_port import LoopPort

    port = LoopPort()
    try:
        assert port.dequeue(timeout=0) == []
        assert port.dequeue(timeout=0) == []  # looked, found nothing
        port.post(key=5)
        assert [c.key for c in port.dequeue(timeout=0)] == [5]  # the look saw it
        for index in range(300):
            port.post(key=100 + index)
        seen = [c.key for c in port.dequeue(timeout=0, max_entries=128)]
        assert len(seen) == 128
        while len(seen) < 300:
            batch = port.dequeue(timeout=0, max_entries=128)
            assert batch, "a packet was left behind"
            seen.extend(c.key for c in batch)
        assert sorted(seen) == list(range(100, 400))
        assert port.dequeue(timeout=0) == [] and not port.has_queued()
        port.post(key=6)
        assert [c.key for c in port.dequeue(timeout=5)] == [6]
    finally:
        port.close()


def test_streams_are_byte_exact_under_random_chunking() -> None:
    """TCP both ways (client writes random chunks, server echoes with random read sizes) and a
    pipe pair through connect_write_pipe / connect_read_pipe: hashes equal."""
    from iocp import create_pipe

    rng = random.Random(12)
    payload = rng.randbytes(3 * 1024 * 1024)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(rng.randint(1, 100_000)):
            writer.write(data)
            if rng.random() < 0.3:
                await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            received = await read_to_end(reader, rng, send_chunks(writer, payload, rng))
            writer.close()
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()

        loop = asyncio.get_running_loop()
        read_end, write_end = create_pipe()
        pipe_reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(pipe_reader), read_end)
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.streams.FlowControlMixin(), write_end)
        pipe_writer = asyncio.StreamWriter(transport, protocol, None, loop)

        async def feed() -> None:
            for chunk in random_chunks(payload, rng):
                pipe_writer.write(chunk)
                await pipe_writer.drain()
            pipe_writer.close()

        feeder = asyncio.create_task(feed())
        through_pipe = await pipe_reader.read()
        await feeder
        assert hashlib.sha256(through_pipe).digest() == hashlib.sha256(payload).digest()

    run(main)


def test_subprocess_large_output_both_ways() -> None:
    """8 MiB into a cat child and back while 2 MiB come on stderr: every byte, in order."""
    rng = random.Random(4)
    payload = rng.randbytes(8 * 1024 * 1024)
    both = ("import shutil, sys, threading\n"
            "t = threading.Thread(target=lambda: [sys.stderr.buffer.write(b'e' * 65536)"
            " for _ in range(32)])\n"
            "t.start()\n"
            "shutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer, 65536)\n"
            "t.join()\n")

    async def main() -> None:
        process = await asyncio.create_subprocess_exec(
            PY, "-c", both, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate(payload)
        assert process.returncode == 0
        assert hashlib.sha256(out).digest() == hashlib.sha256(payload).digest()
        assert err == b"e" * (32 * 65536)

        shell = await asyncio.create_subprocess_shell(
            "echo shell-ok", stdout=asyncio.subprocess.PIPE)
        assert (await shell.stdout.read()).strip() == b"shell-ok"  # type: ignore[union-attr]
        assert await shell.wait() == 0

    run(main)


def test_early_child_exit_while_we_write() -> None:
    """A child that exits at once with code 3 while we write 8 MiB to its stdin: the write
    side ends (BrokenPipeError or a clean close), wait() gives 3, nothing hangs."""
    async def main() -> None:
        process = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; sys.exit(3)", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        assert process.stdin is not None
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(128):
                process.stdin.write(b"x" * 65536)
                await process.stdin.drain()
        assert await process.wait() == 3
        assert process.returncode == 3
        assert process.stdout is not None and await process.stdout.read() == b""

        # communicate() with a child that exits early: its output, its code.
        early = await asyncio.create_subprocess_exec(
            PY, "-c", "print('bye'); import sys; sys.exit(5)", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        out, _ = await early.communicate(b"y" * (4 * 1024 * 1024))
        assert out.strip() == b"bye" and early.returncode == 5

    run(main)


def test_kill_wait_and_returncode_without_a_thread_per_child() -> None:
    """kill(), wait(), returncode; 20 children alive at once add no Python thread (their exits
    are job messages on the loop's port)."""
    async def main() -> None:
        threads = threading.active_count()
        children = [await asyncio.create_subprocess_exec(
            PY, "-c", "import time; time.sleep(60)") for _ in range(20)]
        assert threading.active_count() == threads
        for child in children:
            assert child.returncode is None
            child.kill()
        codes = await asyncio.gather(*(child.wait() for child in children))
        assert all(isinstance(code, int) and code != 0 for code in codes)
        assert [child.returncode for child in children] == codes
        assert threading.active_count() == threads
        loop = asyncio.get_running_loop()
        assert loop._children.watched == 0  # type: ignore[attr-defined]

    run(main)


def _cancel_pending_io_once() -> None:
    from iocp import create_pipe

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # A read pending on a pipe nobody writes, cancelled.
        read_end, silent_write_end = create_pipe()
        reader = asyncio.StreamReader()
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), read_end)
        task = asyncio.create_task(reader.read(100))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        read_transport.close()
        silent_write_end.close()
        # A write pending on a pipe nobody reads (more than its buffer), aborted.
        unread_end, write_end = create_pipe()
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, write_end)
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        writer.write(b"z" * (1024 * 1024))
        drain = asyncio.create_task(writer.drain())
        await asyncio.sleep(0)
        drain.cancel()
        transport.abort()
        await asyncio.sleep(0.05)
        unread_end.close()
        port = loop.port  # type: ignore[attr-defined]
        for _ in range(100):
            if port.pending_count <= 1:  # only the self-pipe's poll
                break
            await asyncio.sleep(0.01)
        assert port.pending_count <= 1

    run(main)


def test_cancelling_pending_reads_and_writes_leaks_nothing() -> None:
    from .support import process_handle_count

    _cancel_pending_io_once()
    gc.collect()
    before = process_handle_count()
    for _ in range(30):
        _cancel_pending_io_once()
    gc.collect()
    after = process_handle_count()
    assert after - before <= 4, f"handle count grew from {before} to {after}"


def test_a_transport_closed_with_operations_pending() -> None:
    """close() with a read in flight: connection_lost(None) once, no data after it, the
    cancelled read's completion dequeued (the kernel gives its buffer back)."""
    from iocp import create_pipe

    class Recorder(asyncio.Protocol):
        def __init__(self) -> None:
            self.events: list[str] = []
            self.lost = asyncio.get_running_loop().create_future()

        def data_received(self, data: bytes) -> None:
            self.events.append("data")

        def connection_lost(self, exc: Exception | None) -> None:
            self.events.append(f"lost:{exc!r}")
            self.lost.set_result(None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        read_end, write_end = create_pipe()
        with write_end:
            protocol = Recorder()
            transport, _ = await loop.connect_read_pipe(lambda: protocol, read_end)
            await asyncio.sleep(0)
            operation = transport._read_op  # type: ignore[attr-defined]
            assert operation is not None and operation.pending
            transport.close()
            transport.close()  # idempotent
            await protocol.lost
            for _ in range(100):
                if not operation.pending:
                    break
                await asyncio.sleep(0.01)
            assert not operation.pending and operation.cancelled
        assert protocol.events == ["lost:None"]
        assert read_end.closed

        # A subprocess transport closed while its pipes' reads are pending: the child is
        # killed, the transport finishes.
        process = await asyncio.create_subprocess_exec(
            PY, "-c", "import time; time.sleep(60)", stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.PIPE)
        process._transport.close()  # type: ignore[attr-defined]
        assert await process.wait() != 0

    run(main)


def test_call_soon_threadsafe_wakes_the_loop() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        threading.Timer(0.2, loop.call_soon_threadsafe, (future.set_result, "woken")).start()
        assert await future == "woken"

    run(main)


def test_ctrl_c_during_run_until_complete() -> None:
    """SIGINT raised while the loop waits (nothing else would wake it for an hour):
    KeyboardInterrupt comes out of run_until_complete; the loop still closes cleanly. Then the
    same through asyncio.Runner, whose handler cancels the main task."""
    loop = asyncio_loop.new_event_loop()
    try:
        threading.Timer(0.3, signal.raise_signal, (signal.SIGINT,)).start()
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(asyncio.sleep(3600))
    finally:
        loop.close()
    assert loop.port.closed  # type: ignore[attr-defined]

    async def sleeper() -> None:
        threading.Timer(0.3, signal.raise_signal, (signal.SIGINT,)).start()
        await asyncio.sleep(3600)

    with pytest.raises(KeyboardInterrupt):
        with Runner(loop_factory=asyncio_loop.new_event_loop) as runner:
            runner.run(sleeper())


def test_policy_for_python_3_10_and_3_11() -> None:
    from afd.aio_loop import AfdEventLoop

    async def which() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(asyncio_loop.EventLoopPolicy())
    try:
        assert isinstance(asyncio.run(which()), AfdEventLoop)
    finally:
        asyncio.set_event_loop_policy(previous)



def test_a_failing_spawn_leaks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The property CPython's test_popen_error checks on the Proactor loop's spawner, on ours:
    Popen raising (with and without a stdin pipe) propagates the error, warns nothing, and
    closes every pipe handle made for the child."""
    import subprocess
    import warnings

    from .support import process_handle_count

    def failing_popen(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("no child")

    async def attempt(stdin: Any) -> None:
        with pytest.raises(ZeroDivisionError):
            await asyncio.create_subprocess_exec(PY, "-c", "pass", stdin=stdin,
                                                 stdout=asyncio.subprocess.PIPE)

    async def main() -> None:
        for stdin in (None, asyncio.subprocess.PIPE):
            await attempt(stdin)
        gc.collect()
        before = process_handle_count()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(20):
                for stdin in (None, asyncio.subprocess.PIPE):
                    await attempt(stdin)
            gc.collect()
        assert [str(w.message) for w in caught] == []
        assert process_handle_count() - before <= 2

    monkeypatch.setattr(subprocess, "Popen", failing_popen)  # as afd.aio_subprocess calls it
    run(main)


def test_io_is_seen_while_callbacks_keep_the_loop_busy() -> None:
    """The loop skips a few zero-timeout polls after one that found I/O (MAX_SKIPPED_POLLS),
    never all: a task spinning on sleep(0) cannot starve sockets, pipes or children."""
    from iocp import create_pipe

    async def main() -> None:
        loop = asyncio.get_running_loop()
        spinning = True
        spins = 0

        async def spin() -> None:
            nonlocal spins
            while spinning:
                spins += 1
                await asyncio.sleep(0)

        spinner = asyncio.create_task(spin())
        server = await asyncio.start_server(echo_once, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            for _ in range(50):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                writer.close()
        read_end, write_end = create_pipe()
        pipe_reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(pipe_reader), read_end)
        transport, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, write_end)
        for index in range(50):
            transport.write(b"%d;" % index)
            await pipe_reader.readuntil(b";")
        transport.close()
        child = await asyncio.create_subprocess_exec(PY, "-c", "pass")
        assert await child.wait() == 0
        spinning = False
        await spinner
        assert spins > 100

    async def echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(4))
        writer.close()

    run(main)
