"""asyncio streams on AfdSelector: an echo server holding more connections than select allows."""

from __future__ import annotations

import asyncio

import pytest

from afd.asyncio_loop import new_event_loop

pytestmark = pytest.mark.windows

CONNECTIONS = 600


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(4096):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _client(port: int, index: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    message = f"hello {index}".encode()
    for _ in range(3):
        writer.write(message)
        await writer.drain()
        assert await reader.readexactly(len(message)) == message
    writer.close()
    await writer.wait_closed()
    return message


async def _main() -> list[bytes]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    async with server:
        return await asyncio.wait_for(
            asyncio.gather(*(_client(port, index) for index in range(CONNECTIONS))), 120)


def test_asyncio_echo_server_beyond_select_ceiling() -> None:
    loop = new_event_loop()
    try:
        results = loop.run_until_complete(_main())
    finally:
        loop.close()
    assert sorted(results) == sorted(f"hello {i}".encode() for i in range(CONNECTIONS))
