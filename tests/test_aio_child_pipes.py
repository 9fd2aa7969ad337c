"""AfdEventLoop's own child pipes (issue 12): skip-on-success only on the pipes the loop makes
for a child, reads that complete inline with no packet, end of data found inline, and the
inline budget (one read per transport per loop turn: a pipe that always has data starves
nothing)."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from afd.aio_pipes import ChildPipe, ReadPipeTransport

from .test_aio_loop import CAT, PY, run

pytestmark = pytest.mark.windows


class Recorder(asyncio.Protocol):
    """Collects what a read pipe delivers, and whether it ended."""

    def __init__(self, name: str = "", order: list[str] | None = None) -> None:
        self.name = name
        self.order = order
        self.data = bytearray()
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = (
            asyncio.get_running_loop().create_future())

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.order is not None:
            self.order.append(self.name)

    def eof_received(self) -> None:
        self.eof = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


def _child_read_pipe() -> tuple[ChildPipe, int]:
    """A pipe as the loop makes one for a child's stdout: our end a ChildPipe (overlapped),
    the writer's end a synchronous C runtime fd (as the child's)."""
    from iocp import child_stdio_pipe

    ours, fd = child_stdio_pipe(child_reads=False)
    return ChildPipe(ours.detach(), "test child pipe"), fd


def _count_port_deliveries(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the read completions that came through the port (``_completed``)."""
    seen = [0]
    completed = ReadPipeTransport._completed

    def counting(self: ReadPipeTransport, operation: Any) -> None:
        seen[0] += 1
        completed(self, operation)

    monkeypatch.setattr(ReadPipeTransport, "_completed", counting)
    return seen


def test_only_the_loops_own_pipes_get_skip_on_success() -> None:
    """A subprocess's stdin/stdout transports run with skip-on-success; a pipe a user passes to
    connect_read_pipe / connect_write_pipe never gets it (it cannot be cleared)."""
    from iocp import create_pipe

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, PY, "-c", CAT, stdin=-1, stdout=-1)
        for fd in (0, 1):
            pipe: Any = transport.get_pipe_transport(fd)
            assert pipe._io.skip_on_success, pipe
        transport.close()
        read_end, write_end = create_pipe()
        reader, _ = await loop.connect_read_pipe(asyncio.Protocol, read_end)
        writer, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, write_end)
        assert not reader._io.skip_on_success  # type: ignore[attr-defined]
        assert not writer._io.skip_on_success  # type: ignore[attr-defined]
        writer.close()
        reader.close()
        await asyncio.sleep(0)

    run(main)


def test_reads_complete_inline_and_end_of_data_is_found_inline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything written (and the writer closed) before the transport reads: every read
    completes inline (no completion through the port), the last read finds the pipe broken
    at once (F12) — end of data — and eof_received/connection_lost follow; byte-exact."""
    port_deliveries = _count_port_deliveries(monkeypatch)
    payload = os.urandom(48 * 1024)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, fd = _child_read_pipe()
        os.write(fd, payload)  # fits the pipe's 64 KiB buffer
        os.close(fd)
        protocol = Recorder()
        await loop.connect_read_pipe(lambda: protocol, ours)
        assert await asyncio.wait_for(protocol.lost, 30) is None
        assert protocol.eof
        assert bytes(protocol.data) == payload

    run(main)
    assert port_deliveries[0] == 0


def test_a_read_that_waits_completes_through_the_port_then_inline_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing written yet the read goes pending and its completion comes through the
    port; data written later by a thread, 2 MiB in 4 KiB pieces, arrives byte-exact."""
    port_deliveries = _count_port_deliveries(monkeypatch)
    payload = os.urandom(2 * 1024 * 1024)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, fd = _child_read_pipe()
        protocol = Recorder()
        transport, _ = await loop.connect_read_pipe(lambda: protocol, ours)
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert transport._read_op is not None  # type: ignore[attr-defined]  # pending

        def write() -> None:
            for start in range(0, len(payload), 4096):
                os.write(fd, payload[start:start + 4096])
            os.close(fd)

        thread = threading.Thread(target=write)
        thread.start()
        try:
            assert await asyncio.wait_for(protocol.lost, 60) is None
        finally:
            thread.join(30)
        assert bytes(protocol.data) == payload

    run(main)
    assert port_deliveries[0] >= 1


def test_an_always_readable_pipe_starves_no_other() -> None:
    """The inline budget (one read per transport per loop turn): while a thread keeps one
    child pipe full (its reads always complete inline), 20 messages on another pipe each
    arrive, a timer fires, and the flood goes on meanwhile."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        (flood_end, flood_fd), (quiet_end, quiet_fd) = _child_read_pipe(), _child_read_pipe()
        flood, quiet = Recorder(), Recorder()

        def pour() -> None:
            chunk = b"p" * 65536
            try:
                while not stop.is_set():
                    os.write(flood_fd, chunk)
            except OSError:
                pass  # our end closed: the pipe is broken

        thread = threading.Thread(target=pour)
        thread.start()
        transports = []
        try:
            for ours, protocol in ((flood_end, flood), (quiet_end, quiet)):
                transport, _ = await loop.connect_read_pipe(
                    lambda protocol=protocol: protocol, ours)  # type: ignore[misc]
                transports.append(transport)
            fired = loop.create_future()
            loop.call_later(0.1, fired.set_result, None)
            await asyncio.wait_for(fired, 30)
            assert flood.data
            started = len(flood.data)
            for index in range(20):
                message = b"%05d" % index
                os.write(quiet_fd, message)
                while not quiet.data.endswith(message):
                    await asyncio.sleep(0)
            assert thread.is_alive()
            assert len(flood.data) > started  # the flood went on meanwhile
        finally:
            stop.set()
            for transport in transports:
                transport.close()
            for protocol in (flood, quiet):
                await asyncio.wait_for(protocol.lost, 30)
            thread.join(30)  # its blocked write fails once our end is closed
            os.close(flood_fd)
            os.close(quiet_fd)
        assert quiet.data == b"".join(b"%05d" % index for index in range(20))

    run(main)
