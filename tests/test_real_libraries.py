"""Real libraries that need ``add_reader`` on Windows, run on ntafd's loop without their helper
thread (issue 12).

On Windows the stdlib's default loop (Proactor) has no ``add_reader``: Tornado then wraps it in
``tornado.platform.asyncio.AddThreadSelectorEventLoop``, whose ``SelectorThread`` runs
``select()`` on a daemon thread named "Tornado selector"; pyzmq's ``zmq.asyncio`` warns
(``RuntimeWarning``) and uses the same Tornado class, remembering it in ``zmq.asyncio._selectors``;
aiodns, when c-ares' own event thread is not available, refuses any loop that is not a
``SelectorEventLoop``. On ``afd.asyncio_loop.new_event_loop()`` each must use the loop itself.

The libraries come from tools/install-real-libraries.sh (pinned; tools/winpy puts the Windows
folder on the path, tools/run-tests.sh the Linux one on the Linux leg's). Off Windows the same
tests run on the stdlib loop that ``afd.asyncio_loop`` gives there, or skip if the libraries are
not installed; in the Wine legs a skip fails (tests/conftest.py). The DNS server is a UDP responder
on the same loop: no external network.
"""

from __future__ import annotations

import asyncio
import random
import struct
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import pytest

from afd import asyncio_loop

Runner: Any = getattr(asyncio, "Runner", None)  # Python 3.11+ (the Wine legs run 3.11)

# tornado.platform.asyncio.SelectorThread names its thread so; pyzmq's zmq.asyncio uses the same
# Tornado class (AddThreadSelectorEventLoop) for a Proactor loop.
TORNADO_SELECTOR_THREAD = "Tornado selector"
HOW_TO_INSTALL = ("run tools/install-real-libraries.sh (make test does), then put its folder on "
                  "the path")


def need(module: str) -> Any:
    return pytest.importorskip(module, reason=f"{module} is not installed here: {HOW_TO_INSTALL}")


def selector_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate()
            if thread.name == TORNADO_SELECTOR_THREAD or "selector" in thread.name.lower()]


def check_the_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The running loop is ntafd's (AfdEventLoop on Windows) and no library started a selector
    thread beside it."""
    assert isinstance(loop, asyncio_loop.EventLoop)
    assert isinstance(loop, asyncio.SelectorEventLoop)
    if sys.platform == "win32":
        from afd.aio_loop import AfdEventLoop

        assert type(loop) is AfdEventLoop
    assert selector_threads() == []


def run(main: Callable[[], Awaitable[Any]], timeout: float = 120) -> Any:
    """Run ``main()`` on a fresh loop from ``afd.asyncio_loop`` (asyncio.Runner + loop_factory),
    with warnings recorded: a library that falls back to a helper thread warns (pyzmq)."""
    assert selector_threads() == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Runner(loop_factory=asyncio_loop.new_event_loop) as runner:
            result = runner.run(asyncio.wait_for(main(), timeout))
    helper_warnings = [str(w.message) for w in caught if "add_reader" in str(w.message)]
    assert helper_warnings == []
    assert selector_threads() == []
    return result


# --- Tornado ------------------------------------------------------------------------------------

def test_tornado_http_server_and_client_without_the_selector_thread() -> None:
    """Tornado's HTTP server and AsyncHTTPClient (both on IOStream, i.e. add_reader/add_writer
    through Tornado's IOLoop) exchange 4 MiB request and response bodies (far larger than a
    socket buffer), eight requests at once, and a chunked 3 MiB download: byte-exact; Tornado's
    IOLoop uses the running loop itself as its selector loop."""
    need("tornado")
    from tornado.httpclient import AsyncHTTPClient
    from tornado.httpserver import HTTPServer
    from tornado.ioloop import IOLoop
    from tornado.netutil import bind_sockets
    from tornado.web import Application, RequestHandler

    rng = random.Random(12)
    bodies = [rng.randbytes(4 * 1024 * 1024 + index) for index in range(8)]
    download = rng.randbytes(3 * 1024 * 1024 + 5)

    class Echo(RequestHandler):  # type: ignore[misc,unused-ignore]  # Any without tornado
        def post(self) -> None:
            self.set_header("Content-Type", "application/octet-stream")
            self.write(self.request.body[::-1])

    class Download(RequestHandler):  # type: ignore[misc,unused-ignore]
        async def get(self) -> None:
            self.set_header("Content-Type", "application/octet-stream")
            for start in range(0, len(download), 100_000):  # chunked: one flush per piece
                self.write(download[start:start + 100_000])
                await self.flush()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        io_loop = IOLoop.current()
        assert io_loop.asyncio_loop is loop  # type: ignore[attr-defined,unused-ignore]
        assert io_loop.selector_loop is loop  # type: ignore[attr-defined,unused-ignore]
        sockets = bind_sockets(0, "127.0.0.1")
        port = sockets[0].getsockname()[1]
        server = HTTPServer(Application([("/echo", Echo), ("/download", Download)]))
        server.add_sockets(sockets)
        client = AsyncHTTPClient(force_instance=True, max_clients=8)
        try:
            url = f"http://127.0.0.1:{port}"
            replies = await asyncio.gather(*(
                client.fetch(f"{url}/echo", method="POST", body=body, request_timeout=100,
                             headers={"Content-Type": "application/octet-stream"})
                for body in bodies))
            for body, reply in zip(bodies, replies, strict=True):
                assert reply.code == 200
                assert reply.body == body[::-1]
            reply = await client.fetch(f"{url}/download", request_timeout=100)
            assert reply.body == download
            check_the_loop(loop)
        finally:
            client.close()
            server.stop()
            await server.close_all_connections()

    run(main)


# --- pyzmq --------------------------------------------------------------------------------------

def test_pyzmq_req_rep_and_dealer_router_without_the_selector_thread() -> None:
    """zmq.asyncio REQ/REP and DEALER/ROUTER over tcp://127.0.0.1: multipart messages of random
    sizes up to 2 MiB come back byte-exact; pyzmq registered its sockets' FDs with the loop's
    own selector (no entry in its registry of selector threads, no warning)."""
    need("zmq.asyncio")
    import zmq
    import zmq.asyncio

    rng = random.Random(27)

    async def req_rep(context: Any) -> None:
        rep = context.socket(zmq.REP)
        req = context.socket(zmq.REQ)
        try:
            port = rep.bind_to_random_port("tcp://127.0.0.1")
            req.connect(f"tcp://127.0.0.1:{port}")
            messages = [[rng.randbytes(rng.choice((0, 1, 100, 70_000, 2 * 1024 * 1024))),
                         rng.randbytes(rng.randint(0, 5_000))] for _ in range(30)]

            async def serve() -> None:
                for _ in messages:
                    parts = await rep.recv_multipart()
                    await rep.send_multipart([b"re", *parts[::-1]])

            server = asyncio.ensure_future(serve())
            for message in messages:
                await req.send_multipart(message)
                assert await req.recv_multipart() == [b"re", *message[::-1]]
            await server
            # zmq.asyncio watches each socket's ZMQ_FD with the loop's own add_reader.
            selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
            assert {req.FD, rep.FD} <= set(selector.get_map())
        finally:
            req.close(linger=0)
            rep.close(linger=0)

    async def dealer_router(context: Any) -> None:
        router = context.socket(zmq.ROUTER)
        dealers = [context.socket(zmq.DEALER) for _ in range(4)]
        try:
            port = router.bind_to_random_port("tcp://127.0.0.1")
            for index, dealer in enumerate(dealers):
                dealer.setsockopt(zmq.IDENTITY, b"dealer-%d" % index)
                dealer.connect(f"tcp://127.0.0.1:{port}")
            payloads = {index: [rng.randbytes(rng.randint(0, 300_000)) for _ in range(10)]
                        for index in range(len(dealers))}

            async def serve(count: int) -> None:
                for _ in range(count):
                    identity, payload = await router.recv_multipart()
                    await router.send_multipart([identity, identity + b":" + payload])

            async def talk(index: int) -> None:
                for payload in payloads[index]:
                    await dealers[index].send(payload)
                    assert await dealers[index].recv() == b"dealer-%d:" % index + payload

            server = asyncio.ensure_future(serve(sum(map(len, payloads.values()))))
            await asyncio.gather(*(talk(index) for index in range(len(dealers))))
            await server
        finally:
            for dealer in dealers:
                dealer.close(linger=0)
            router.close(linger=0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        context = zmq.asyncio.Context()
        try:
            await req_rep(context)
            await dealer_router(context)
            assert loop not in zmq.asyncio._selectors  # pyzmq's registry of selector threads
            check_the_loop(loop)
        finally:
            context.term()

    run(main)


# --- aiodns -------------------------------------------------------------------------------------

ADDRESSES = {b"alpha.example.test": ["10.1.2.3", "10.1.2.4"], b"beta.example.test": ["192.0.2.77"]}


def dns_reply(query: bytes) -> bytes:
    """The answer of a tiny authoritative server: A records for ADDRESSES, NXDOMAIN otherwise."""
    ident, _flags, questions = struct.unpack("!HHH", query[:6])
    assert questions == 1
    labels, position = [], 12
    while query[position]:
        length = query[position]
        labels.append(query[position + 1:position + 1 + length])
        position += 1 + length
    question = query[12:position + 5]
    qtype = struct.unpack("!H", query[position + 1:position + 3])[0]
    addresses = ADDRESSES.get(b".".join(labels).lower(), []) if qtype == 1 else []
    rcode = 0 if b".".join(labels).lower() in ADDRESSES else 3
    header = struct.pack("!HHHHHH", ident, 0x8400 | rcode, 1, len(addresses), 0, 0)
    answers = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4)
                       + bytes(int(part) for part in address.split("."))
                       for address in addresses)
    return header + question + answers


class DnsResponder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (3.11's selector datagram transport does not derive from DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.queries += 1
        self.transport.sendto(dns_reply(data), addr)


async def resolve_all(aiodns: Any, loop: asyncio.AbstractEventLoop, **options: Any) -> Any:
    """Start a responder on the loop, resolve every name of ADDRESSES (and one missing name)
    through aiodns, check the answers; returns the resolver's ``_event_thread``."""
    transport, responder = await loop.create_datagram_endpoint(
        DnsResponder, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    resolver = aiodns.DNSResolver(nameservers=[f"127.0.0.1:{port}"], loop=loop, timeout=5,
                                  tries=2, **options)
    try:
        for name, expected in ADDRESSES.items():
            result = await resolver.query_dns(name.decode(), "A")
            assert sorted(record.data.addr for record in result.answer) == sorted(expected)
        with pytest.raises(aiodns.error.DNSError):
            await resolver.query_dns("missing.example.test", "A")
        assert responder.queries >= len(ADDRESSES) + 1
        return resolver._event_thread
    finally:
        await resolver.close()
        transport.close()


@pytest.fixture
def without_the_event_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """aiodns 4 asks pycares for a channel run by c-ares' own event thread, and only when c-ares
    cannot make one falls back to ``sock_state_cb`` + ``loop.add_reader`` (the path that needs a
    SelectorEventLoop on Windows, as aiodns < 3.3 always did): refuse the event thread here."""
    aiodns = need("aiodns")
    import pycares

    channel = pycares.Channel

    def no_event_thread(**options: Any) -> Any:
        if options.get("sock_state_cb") is None:
            raise pycares.AresError("this test refuses c-ares' event thread")
        return channel(**options)

    monkeypatch.setattr(pycares, "Channel", no_event_thread)
    yield aiodns


def test_aiodns_resolves_through_add_reader(without_the_event_thread: Any) -> None:
    """aiodns' add_reader path (c-ares' sockets watched by the loop through ``sock_state_cb``)
    accepts ntafd's loop (it is a SelectorEventLoop) and resolves names from a UDP responder on
    the same loop; c-ares' sockets were registered with the loop's selector."""
    aiodns = without_the_event_thread

    async def main() -> None:
        loop = asyncio.get_running_loop()
        watched: list[int] = []
        add_reader = loop.add_reader

        def spy(fd: Any, callback: Callable[..., Any], *args: Any) -> None:
            watched.append(fd)
            add_reader(fd, callback, *args)

        setattr(loop, "add_reader", spy)  # noqa: B010 (an instance attribute, not a method)
        try:
            assert await resolve_all(aiodns, loop) is False  # the add_reader path was taken
        finally:
            delattr(loop, "add_reader")
        assert watched  # c-ares' UDP socket(s), through the loop's selector
        check_the_loop(loop)

    run(main)


@pytest.mark.windows
def test_aiodns_refuses_the_proactor_loop_on_that_path(without_the_event_thread: Any) -> None:
    """The check the loop above passes is real: on the same path aiodns refuses the stdlib's
    default Windows loop."""
    aiodns = without_the_event_thread
    loop = asyncio.ProactorEventLoop()  # type: ignore[attr-defined,unused-ignore]
    try:
        with pytest.raises(RuntimeError, match="SelectorEventLoop"):
            aiodns.DNSResolver(nameservers=["127.0.0.1"], loop=loop)
    finally:
        loop.close()


def test_aiodns_with_the_event_thread_of_c_ares() -> None:
    """aiodns 4 with pycares 5 by default lets c-ares' own event thread (native, not a Python
    thread) watch its sockets and hands results over with ``call_soon_threadsafe``: on ntafd's
    loop too (under Wine c-ares' event thread works)."""
    aiodns = need("aiodns")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert await resolve_all(aiodns, loop) is True
        check_the_loop(loop)

    run(main)
