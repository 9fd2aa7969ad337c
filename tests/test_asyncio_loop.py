"""asyncio streams on AfdSelector: an echo server holding 2,000 connections at once (4,000
sockets in one process; select() stops at 512)."""

from __future__ import annotations

import asyncio

import pytest

from afd import AfdSelector
from afd.asyncio_loop import AfdEventLoopPolicy, new_event_loop

pytestmark = pytest.mark.windows

CONNECTIONS = 2000
ROUND_TRIPS = 3


class EchoServer:
    def __init__(self) -> None:
        self.open = 0
        self.most_open = 0
        self.all_connected = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        if self.open == CONNECTIONS:
            self.all_connected.set()
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        finally:
            self.open -= 1
            writer.close()


async def _client(port: int, index: int, all_connected: asyncio.Event) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await all_connected.wait()  # every connection is open before any traffic
    message = f"hello {index}".encode()
    for _ in range(ROUND_TRIPS):
        writer.write(message)
        await writer.drain()
        assert await reader.readexactly(len(message)) == message
    writer.close()
    await writer.wait_closed()
    return message


async def _main() -> tuple[list[bytes], int]:
    echo = EchoServer()
    server = await asyncio.start_server(echo.serve, "127.0.0.1", 0, backlog=2048)
    port = server.sockets[0].getsockname()[1]
    async with server:
        results = await asyncio.wait_for(asyncio.gather(
            *(_client(port, index, echo.all_connected) for index in range(CONNECTIONS))), 240)
    return results, echo.most_open


def test_asyncio_echo_server_holds_two_thousand_connections() -> None:
    loop = new_event_loop()
    try:
        assert isinstance(loop._selector, AfdSelector)  # type: ignore[attr-defined]
        results, most_open = loop.run_until_complete(_main())
    finally:
        loop.close()
    assert most_open == CONNECTIONS
    assert sorted(results) == sorted(f"hello {i}".encode() for i in range(CONNECTIONS))


def test_policy_runs_asyncio_run_on_the_afd_selector() -> None:
    async def which_selector() -> object:
        return asyncio.get_running_loop()._selector  # type: ignore[attr-defined]

    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(AfdEventLoopPolicy())
    try:
        assert isinstance(asyncio.run(which_selector()), AfdSelector)
    finally:
        asyncio.set_event_loop_policy(previous)
