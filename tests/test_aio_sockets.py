"""AfdEventLoop's completion-based socket transports (afd/aio_sockets.py, issue 12): byte-exact
streams both ways, 2,000 connections, pause/resume with data held, write flow control,
half-close, close/abort with requests pending (nothing leaked), peer reset, BufferedProtocol,
TLS, fairness of inline completions, no stray completion."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import random
import socket
import ssl
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from afd import asyncio_loop

from .test_aio_loop import read_to_end, send_chunks

Runner: Any = getattr(asyncio, "Runner", None)  # Python 3.11+ (the Wine legs run 3.11)

pytestmark = pytest.mark.windows

CERT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache",
                    "cpython-tests", "test", "keycert.pem")


def run(main: Callable[[], Awaitable[Any]], timeout: float = 120) -> Any:
    """Run ``main()`` on a fresh AfdEventLoop; afterwards no completion came that the port did
    not expect (a packet for a request completed inline would be one)."""
    with Runner(loop_factory=asyncio_loop.new_event_loop) as runner:
        result = runner.run(asyncio.wait_for(main(), timeout))
        assert runner.get_loop().port.stray_completions == 0
    return result


def _transport_type(writer: asyncio.StreamWriter) -> str:
    return type(writer.transport).__name__


class Recorder(asyncio.Protocol):
    """Records what the transport calls, in order."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.data = bytearray()
        self.calls: list[str] = []
        self.lost: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future())
        self.got_data = asyncio.Event()
        self.keep_open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.calls.append("made")

    def data_received(self, data: bytes) -> None:
        assert not self.lost.done(), "data_received after connection_lost"
        self.data += data
        self.got_data.set()

    def eof_received(self) -> bool:
        self.calls.append("eof")
        return self.keep_open

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")

    def resume_writing(self) -> None:
        self.calls.append("resume_writing")

    def connection_lost(self, exc: BaseException | None) -> None:
        assert not self.lost.done(), "connection_lost called twice"
        self.calls.append("lost")
        self.lost.set_result(exc)


async def _serve(protocol: asyncio.BaseProtocol) -> tuple[asyncio.Server, socket.socket]:
    """A server whose one connection gets ``protocol``, and a plain client socket connected to
    it (non-blocking, for the loop's readiness-based ``sock_*`` methods)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: protocol, "127.0.0.1", 0)
    client = socket.socket()
    client.setblocking(False)
    await loop.sock_connect(client, server.sockets[0].getsockname())
    for _ in range(500):
        if getattr(protocol, "transport", None) is not None:
            break
        await asyncio.sleep(0.01)
    return server, client


async def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    received = bytearray()
    while len(received) < size:
        chunk = await loop.sock_recv(sock, min(size - len(received), 1 << 20))
        if not chunk:
            break
        received += chunk
    return bytes(received)


def test_streams_use_the_completion_transport_byte_exact_both_ways() -> None:
    """Client and server on SocketTransport; 4 MiB each way in random chunks (1 B-70 KB writes,
    random read sizes), the server sending its own stream while echoing: hashes equal."""
    rng = random.Random(1212)
    upstream = rng.randbytes(4 * 1024 * 1024)
    downstream = rng.randbytes(4 * 1024 * 1024)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert _transport_type(writer) == "SocketTransport"
        got = await read_to_end(reader, rng, send_chunks(writer, downstream, rng))
        assert hashlib.sha256(got).digest() == hashlib.sha256(upstream).digest()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert _transport_type(writer) == "SocketTransport"
            received = await read_to_end(reader, rng,
                                         send_chunks(writer, upstream, rng, drain_chance=0.5))
            writer.close()
            await writer.wait_closed()
        assert hashlib.sha256(received).digest() == hashlib.sha256(downstream).digest()

    run(main)


def test_extra_info_and_add_reader_on_a_transport_socket() -> None:
    """get_extra_info gives a TransportSocket, sockname and peername; add_reader on a socket a
    transport owns raises RuntimeError as in the stdlib selector loop."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        protocol = Recorder()
        server, client = await _serve(protocol)
        with client:
            transport = protocol.transport
            sock = transport.get_extra_info("socket")
            assert isinstance(sock, asyncio.trsock.TransportSocket)
            assert transport.get_extra_info("sockname") == server.sockets[0].getsockname()
            assert transport.get_extra_info("peername") == client.getsockname()
            with pytest.raises(RuntimeError, match="is used by transport"):
                loop.add_reader(sock.fileno(), lambda: None)
            transport.close()
            assert await protocol.lost is None
            loop.add_reader(client.fileno(), lambda: None)  # a socket without a transport
            loop.remove_reader(client.fileno())
        server.close()
        await server.wait_closed()

    run(main)


def test_two_thousand_concurrent_connections() -> None:
    """2,000 clients connect at once and each echoes 3 messages through the server."""
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]

        async def client(index: int) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            got = b""
            for round_trip in range(3):
                message = struct.pack("!II", index, round_trip)
                writer.write(message)
                got += await reader.readexactly(len(message))
            writer.close()
            await writer.wait_closed()
            return got

        async with server:
            results = await asyncio.gather(*(client(i) for i in range(2000)))
        for index, got in enumerate(results):
            assert got == b"".join(struct.pack("!II", index, r) for r in range(3))

    run(main, timeout=300)


def test_pause_reading_holds_data_until_resume() -> None:
    """Paused with a receive in flight: the data it brings is held, no data_received until
    resume_reading, then every byte in order."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        protocol = Recorder()
        server, client = await _serve(protocol)
        with client:
            await asyncio.sleep(0.05)  # the transport's first receive is pending now
            protocol.transport.pause_reading()
            assert not protocol.transport.is_reading()
            payload = os.urandom(300_000)
            await loop.sock_sendall(client, payload)
            await asyncio.sleep(0.3)
            assert len(protocol.data) == 0
            protocol.transport.resume_reading()
            assert protocol.transport.is_reading()
            while len(protocol.data) < len(payload):
                protocol.got_data.clear()
                await asyncio.wait_for(protocol.got_data.wait(), 10)
                protocol.transport.pause_reading()  # pause and resume at every delivery
                await asyncio.sleep(0)
                protocol.transport.resume_reading()
            assert bytes(protocol.data) == payload
            protocol.transport.close()
            assert await protocol.lost is None
        server.close()

    run(main)


def test_write_flow_control_pauses_and_resumes_the_protocol() -> None:
    """A peer that does not read: writes above the high-water mark call pause_writing; once
    the peer drains everything, resume_writing, and the bytes arrive exactly."""
    async def main() -> None:
        protocol = Recorder()
        server, client = await _serve(protocol)
        with client:
            transport = protocol.transport
            transport.set_write_buffer_limits(high=64 * 1024)
            assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            payload = os.urandom(8 * 1024 * 1024)
            for offset in range(0, len(payload), 256 * 1024):
                transport.write(payload[offset:offset + 256 * 1024])
            assert "pause_writing" in protocol.calls
            assert transport.get_write_buffer_size() > 64 * 1024
            got = await _recv_exactly(client, len(payload))
            assert got == payload
            for _ in range(100):
                if transport.get_write_buffer_size() == 0:
                    break
                await asyncio.sleep(0.01)
            assert transport.get_write_buffer_size() == 0
            assert protocol.calls.count("pause_writing") == protocol.calls.count("resume_writing")
            transport.close()
            assert await protocol.lost is None
        server.close()

    run(main)


def test_write_eof_is_a_half_close() -> None:
    """The client's write_eof reaches the server as eof_received after all the data; the
    server, keeping its side open, still writes its answer, which the client reads to EOF."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        protocol = Recorder()
        protocol.keep_open = True
        server = await loop.create_server(lambda: protocol, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        assert writer.can_write_eof()
        payload = os.urandom(200_000)
        writer.write(payload)
        writer.write_eof()
        with pytest.raises(RuntimeError):
            writer.write(b"x")
        for _ in range(500):
            if "eof" in protocol.calls:
                break
            await asyncio.sleep(0.01)
        assert protocol.calls == ["made", "eof"]
        assert bytes(protocol.data) == payload
        protocol.transport.write(b"answer after EOF")
        protocol.transport.close()
        assert await reader.read() == b"answer after EOF"
        assert await protocol.lost is None
        writer.close()
        await writer.wait_closed()
        server.close()

    run(main)


def _close_with_requests_pending_once(abort: bool) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        port = loop.port  # type: ignore[attr-defined]
        baseline = port.pending_count
        protocol = Recorder()
        server, client = await _serve(protocol)
        with client:
            transport = protocol.transport
            payload = os.urandom(4 * 1024 * 1024)
            transport.write(payload)  # more than the socket buffers: the send stays pending
            await asyncio.sleep(0.05)
            assert transport._write_op is not None and transport._write_op.pending
            assert transport._read_op is not None and transport._read_op.pending
            if abort:
                transport.abort()
            else:
                transport.close()
                assert not protocol.lost.done()  # waits for the send
                got = await _recv_exactly(client, len(payload))
                assert got == payload
            assert await protocol.lost is None
            assert [call for call in protocol.calls if call in ("made", "eof", "lost")] == [
                "made", "lost"]
            assert transport.is_closing()
        server.close()
        await server.wait_closed()
        for _ in range(200):
            if port.pending_count <= baseline:
                break
            await asyncio.sleep(0.01)
        assert port.pending_count <= baseline

    run(main)


@pytest.mark.parametrize("abort", [True, False], ids=["abort", "close"])
def test_a_transport_closed_with_a_receive_and_a_send_pending_leaks_nothing(
        abort: bool) -> None:
    """abort(), or close() then the peer reads everything: connection_lost(None) once, the
    port's pending count back to what it was, the process's handle count flat over 20 rounds."""
    from .support import process_handle_count

    _close_with_requests_pending_once(abort)
    gc.collect()
    before = process_handle_count()
    for _ in range(20):
        _close_with_requests_pending_once(abort)
    gc.collect()
    after = process_handle_count()
    assert after - before <= 4, f"handle count grew from {before} to {after}"


def test_peer_reset_mid_transfer() -> None:
    """The peer resets (SO_LINGER 0) while the server streams to it and reads from it: the
    protocol's connection_lost gets a ConnectionError, drain() raises it."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        results.append(await _stream_until_reset(reader, writer))

    async def _stream_until_reset(reader: asyncio.StreamReader,
                                  writer: asyncio.StreamWriter) -> BaseException | None:
        assert await reader.readexactly(5) == b"hello"
        try:
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        except ConnectionError as exc:
            return exc
        finally:
            writer.close()

    results: list[BaseException | None] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, server.sockets[0].getsockname())
        await loop.sock_sendall(client, b"hello")
        await _recv_exactly(client, 200_000)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("hh", 1, 0))
        client.close()
        for _ in range(500):
            if results:
                break
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        assert len(results) == 1
        assert isinstance(results[0], ConnectionError), results

    run(main)


def test_peer_reset_while_only_reading() -> None:
    """A reset while a receive is pending: connection_lost(ConnectionResetError)."""
    async def main() -> None:
        protocol = Recorder()
        server, client = await _serve(protocol)
        await asyncio.sleep(0.05)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("hh", 1, 0))
        client.close()
        exc = await asyncio.wait_for(protocol.lost, 10)
        # Windows reports the reset; a peer's RST may also read as a plain end of data.
        assert exc is None or isinstance(exc, ConnectionError), exc
        server.close()

    run(main)


class Buffered(asyncio.BufferedProtocol):
    """A BufferedProtocol with a small buffer (every delivery spans several get_buffer calls)."""

    def __init__(self) -> None:
        self.buffer = bytearray(1000)
        self.data = bytearray()
        self.transport: Any = None
        self.eof = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]

    def eof_received(self) -> bool:
        self.eof.set_result(None)
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        pass


def test_buffered_protocol_receives_every_byte() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        protocol = Buffered()
        server, client = await _serve(protocol)
        with client:
            assert type(protocol.transport).__name__ == "SocketTransport"
            payload = os.urandom(2 * 1024 * 1024 + 17)
            await loop.sock_sendall(client, payload)
            client.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(protocol.eof, 30)
            assert bytes(protocol.data) == payload
        server.close()

    run(main)


@pytest.mark.skipif(not os.path.exists(CERT), reason="CPython's test certificates are missing: "
                    "run tools/install-cpython-tests.sh (the Wine legs refuse this skip)")
def test_tls_over_the_completion_transport() -> None:
    """TLS server and client (asyncio's SSLProtocol, a BufferedProtocol, over SocketTransport),
    a self-signed certificate: 1 MiB echoed byte-exact, then a clean TLS shutdown."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(CERT)
    client_context = ssl.create_default_context(cafile=CERT)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = writer.transport._ssl_protocol._transport  # type: ignore[attr-defined]
        assert type(raw).__name__ == "SocketTransport"
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context, server_hostname="localhost")
            assert writer.get_extra_info("peercert") is not None
            payload = os.urandom(1024 * 1024)

            async def send() -> None:
                for offset in range(0, len(payload), 50_000):
                    writer.write(payload[offset:offset + 50_000])
                    await writer.drain()

            sender = asyncio.create_task(send())
            got = await reader.readexactly(len(payload))
            await sender
            assert got == payload
            writer.close()
            await writer.wait_closed()

    run(main)


def test_a_flooding_socket_does_not_starve_another() -> None:
    """A thread floods one connection (its receives always complete inline); meanwhile 50
    echo round trips on another connection complete, while the flood is still going."""
    async def main() -> None:
        flood = Recorder()
        server, flooder = await _serve(flood)
        flooder.setblocking(True)
        stop = threading.Event()

        def pour() -> None:
            chunk = b"f" * 65536
            try:
                while not stop.is_set():
                    flooder.sendall(chunk)
            except OSError:
                pass

        thread = threading.Thread(target=pour)
        thread.start()
        try:
            await asyncio.sleep(0.2)
            assert flood.data  # flooding

            async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                while data := await reader.read(1024):
                    writer.write(data)
                writer.close()

            echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
            reader, writer = await asyncio.open_connection(
                *echo_server.sockets[0].getsockname())
            started = len(flood.data)
            for index in range(50):
                message = b"%05d" % index
                writer.write(message)
                assert await asyncio.wait_for(reader.readexactly(5), 30) == message
            assert thread.is_alive()
            assert len(flood.data) > started  # the flood went on during the round trips
            writer.close()
            await writer.wait_closed()
            echo_server.close()
        finally:
            stop.set()
            flood.transport.abort()
            await asyncio.sleep(0.05)
            thread.join(10)
            flooder.close()
        server.close()

    run(main)


def test_a_socket_associated_elsewhere_gets_the_readiness_transport() -> None:
    """A socket whose handle another port already has cannot be associated again: the loop
    falls back to the selector loop's transport, which still works."""
    from iocp import CompletionPort

    async def main() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        with listener, CompletionPort() as other:
            client = socket.create_connection(listener.getsockname())
            other.associate(client.fileno(), 99)
            client.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=client)
            assert _transport_type(writer) == "_SelectorSocketTransport"
            accepted, _ = listener.accept()
            with accepted:
                writer.write(b"ping")
                await writer.drain()
                assert accepted.recv(4) == b"ping"
                accepted.sendall(b"pong")
                assert await reader.readexactly(4) == b"pong"
            writer.close()
            await writer.wait_closed()

    run(main)


def test_the_inline_path_is_taken() -> None:
    """Skip-on-success is set on the transports' sockets (they are their own base handles),
    and an echo's receives mostly complete inline: far fewer port completions than receives."""
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1024):
                writer.write(data)
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        assert writer.transport._io.skip_on_success  # type: ignore[attr-defined]
        dispatched = 0
        original = loop._dispatch  # type: ignore[attr-defined]

        def counting(completion: Any) -> None:
            nonlocal dispatched
            dispatched += 1
            original(completion)

        loop._dispatch = counting  # type: ignore[attr-defined]
        for _ in range(200):
            writer.write(b"m" * 64)
            await reader.readexactly(64)
        assert dispatched < 200, dispatched  # 400 receives in all (both ends)
        writer.close()
        await writer.wait_closed()
        server.close()

    run(main)


def test_the_writes_of_one_turn_leave_as_one_send() -> None:
    """A protocol that answers each message with five writes (bytes, a bytearray it then
    changes, a memoryview, ...) makes one ``WSASend`` per message, not five, and the peer gets
    every byte as it was when written."""
    messages = 60

    class Answer(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            for _ in range(len(data) // 16):
                scratch = bytearray(b"B" * 100)
                self.transport.write(b"A" * 100)
                self.transport.write(scratch)
                scratch[:] = b"x" * 100  # written already: the peer must still get B's
                self.transport.write(memoryview(b"C" * 300)[100:200])
                self.transport.write(b"D" * 100)
                self.transport.write(bytearray(b"E" * 100))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        protocol = Answer()
        server, client = await _serve(protocol)
        with client:
            io = protocol.transport._io
            original = io.write
            sends = 0

            def counting(*args: Any, **kwargs: Any) -> Any:
                nonlocal sends
                sends += 1
                return original(*args, **kwargs)

            io.write = counting
            answer = b"A" * 100 + b"B" * 100 + b"C" * 100 + b"D" * 100 + b"E" * 100
            for _ in range(messages):
                await loop.sock_sendall(client, b"q" * 16)
                assert await _recv_exactly(client, len(answer)) == answer
            assert 1 <= sends <= messages, sends  # five per message without the queue
            protocol.transport.close()
            assert await protocol.lost is None
        server.close()

    run(main)


def test_a_write_made_just_before_the_loop_stops_is_sent() -> None:
    """Writes go out before the loop next polls; a loop stopped in the same turn (no poll
    follows) still sends them before ``run_forever`` returns: the peer, read outside any loop,
    gets the bytes."""
    loop = asyncio_loop.new_event_loop()
    try:
        listener = socket.create_server(("127.0.0.1", 0))
        with listener:
            async def connect() -> asyncio.StreamWriter:
                _, writer = await asyncio.open_connection(*listener.getsockname())
                return writer

            writer = loop.run_until_complete(connect())
            assert _transport_type(writer) == "SocketTransport"
            peer, _ = listener.accept()
            with peer:
                def write_and_stop() -> None:
                    writer.write(b"sent before the loop stopped")
                    loop.stop()

                loop.call_soon(write_and_stop)
                loop.run_forever()
                peer.settimeout(20)
                assert peer.recv(100) == b"sent before the loop stopped"
                writer.close()
                loop.run_until_complete(writer.wait_closed())
        assert loop.port.stray_completions == 0  # type: ignore[attr-defined]
    finally:
        loop.close()


def test_a_writer_that_does_not_wait_fills_the_high_water_mark_per_send() -> None:
    """The default limits are (64 KiB, 256 KiB): a ``write`` + ``drain`` loop of 64 KiB blocks
    (``drain`` waits only when paused) puts five blocks in each send, every byte arriving."""
    blocks = 40

    async def main() -> None:
        loop = asyncio.get_running_loop()
        protocol = Recorder()
        server = await loop.create_server(lambda: protocol, "127.0.0.1", 0)
        async with server:
            _, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            assert writer.transport.get_write_buffer_limits() == (64 * 1024, 256 * 1024)
            io = writer.transport._io  # type: ignore[attr-defined]
            original = io.write
            sizes: list[int] = []

            def recording(data: Any, *args: Any, **kwargs: Any) -> Any:
                sizes.append(len(data))
                return original(data, *args, **kwargs)

            io.write = recording
            payload = os.urandom(blocks * 64 * 1024)
            for offset in range(0, len(payload), 64 * 1024):
                writer.write(payload[offset:offset + 64 * 1024])
                await writer.drain()
            for _ in range(1000):
                if len(protocol.data) == len(payload):
                    break
                await asyncio.sleep(0.01)
            assert bytes(protocol.data) == payload
            assert sum(sizes) == len(payload)
            assert max(sizes) >= 5 * 64 * 1024, sizes
            assert len(sizes) <= blocks // 4, sizes
            writer.close()
            await writer.wait_closed()
            assert await protocol.lost is None

    run(main)

