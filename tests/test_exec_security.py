"""The exec server's security options cannot fail open: client filters checked against a
reference model, empty filter items refused, the library's safe defaults, an exclusive port."""

from __future__ import annotations

import ipaddress
import socket
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from execsession import ExecServer, open_loop
from execsession.__main__ import build_parser, main
from execsession.server import DEFAULT_MAX_CONNS, AddressFilter, is_loopback_host

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- the reference model -----------------------------------------------------------------------
def _forms(address: Address) -> list[Address]:
    """Both ways an IPv4 client can be reported: ``a.b.c.d`` and ``::ffff:a.b.c.d``."""
    if isinstance(address, ipaddress.IPv4Address):
        return [address, ipaddress.IPv6Address(f"::ffff:{address}")]
    if address.ipv4_mapped is not None:
        return [address, address.ipv4_mapped]
    return [address]


def model_permits(allow: list[str], deny: list[str], host: str) -> bool:
    """What --allow/--deny mean, on ``ipaddress`` alone: a client matches a network if the
    client, in either of its forms, is in it (``ipaddress`` ignores a scope in ``in``); deny
    wins; a non-empty allow list admits only its matches."""
    client = _forms(ipaddress.ip_address(host))

    def matches(texts: list[str]) -> bool:
        networks = [ipaddress.ip_network(text, strict=False) for text in texts]
        return any(form in network for form in client for network in networks
                   if form.version == network.version)

    return not matches(deny) and (not allow or matches(allow))


# A few seeds, so that clients and networks overlap often.
V4_SEEDS = [0x0A000005, 0x7F000001, 0xC0A80101, 0x00000000, 0xFFFFFFFF]
V6_SEEDS = [0xFE80 << 112, 0x20010DB8 << 96, 0, 0xFFFF << 32, 0xFFFE << 32, 1 << 127]

v4_values = st.one_of(st.sampled_from(V4_SEEDS).flatmap(
    lambda seed: st.integers(0, 0xFFFF).map(lambda low: seed ^ low)),
    st.integers(0, 2**32 - 1))
v6_values = st.one_of(st.sampled_from(V6_SEEDS).flatmap(
    lambda seed: st.integers(0, 2**40).map(lambda low: seed ^ low)),
    st.integers(0, 2**128 - 1))


def _v4(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def _mapped(value: int) -> str:
    return f"::ffff:{_v4(value)}"


networks = st.one_of(
    st.builds(lambda v, p: f"{_v4(v)}/{p}", v4_values, st.integers(0, 32)),
    st.builds(lambda v, p: f"{_mapped(v)}/{96 + p}", v4_values, st.integers(0, 32)),
    st.builds(lambda v, p: f"{ipaddress.IPv6Address(v)}/{p}", v6_values, st.integers(0, 128)),
    v4_values.map(_v4),
    v4_values.map(_mapped),
)
clients = st.one_of(
    v4_values.map(_v4),
    v4_values.map(_mapped),
    v4_values.map(lambda v: str(ipaddress.IPv6Address(f"::ffff:{_v4(v)}"))),  # hex form
    v6_values.map(lambda v: str(ipaddress.IPv6Address(v))),
    st.builds(lambda v, scope: f"{ipaddress.IPv6Address(v)}%{scope}", v6_values,
              st.sampled_from(["1", "eth0", "lo"])),
    st.builds(lambda v, scope: f"{_mapped(v)}%{scope}", v4_values, st.sampled_from(["1", "2"])),
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(networks, max_size=3), st.lists(networks, max_size=3), clients)
@example(allow=[], deny=["::ffff:10.0.0.0/104"], host="::ffff:10.0.0.5")  # the case
@example(allow=[], deny=["::ffff:10.0.0.0/104"], host="10.0.0.5")
@example(allow=["::ffff:10.0.0.0/104"], deny=[], host="10.0.0.5")
@example(allow=[], deny=["::/0"], host="10.0.0.5")
@example(allow=[], deny=["10.0.0.0/8"], host="::ffff:a00:5")
@example(allow=["fe80::/10"], deny=[], host="fe80::1%eth0")
def test_the_filter_admits_exactly_whom_the_model_admits(allow: list[str], deny: list[str],
                                                         host: str) -> None:
    """Zero clients let in that the model refuses (and none refused that it admits)."""
    assert AddressFilter(allow, deny).permits(host) == model_permits(allow, deny, host)


def test_the_model_has_teeth() -> None:
    """The model disagrees with a filter that ignores mapped networks (the issue's finding)."""
    assert not model_permits([], ["::ffff:10.0.0.0/104"], "::ffff:10.0.0.5")
    assert not model_permits(["192.0.2.0/24"], [], "10.0.0.1")
    assert model_permits([], [], "203.0.113.9")


# -- empty items ---------------------------------------------------------------------------------
@pytest.mark.parametrize("items", [[""], [" "], ["10.0.0.0/8", ""]])
@pytest.mark.parametrize("option", ["allow", "deny"])
def test_an_empty_filter_item_is_an_error(option: str, items: list[str]) -> None:
    with pytest.raises(ValueError, match=f"--{option} .*empty item"):
        AddressFilter(**{option: items})


def test_a_string_instead_of_a_list_is_an_error() -> None:
    with pytest.raises(TypeError, match="not the string"):
        AddressFilter("10.0.0.0/8")


@pytest.mark.parametrize("value", ["", ",", "10.0.0.0/8,", ",127.0.0.1", "127.0.0.1,,::1"])
@pytest.mark.parametrize("option", ["--allow", "--deny"])
def test_the_command_line_refuses_an_empty_item(option: str, value: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["-l", "0", option, value, "-e", "cat"])
    assert caught.value.code == 2
    assert f"{option} '': an empty item" in capsys.readouterr().err


# -- the library's defaults ----------------------------------------------------------------------
def test_the_library_server_has_the_command_lines_connection_cap() -> None:
    assert build_parser().parse_args(["-l", "0", "-e", "x"]).max_conns == DEFAULT_MAX_CONNS
    assert DEFAULT_MAX_CONNS > 0
    with open_loop() as loop:
        server = ExecServer(loop, ("127.0.0.1", 0), ["cat"])
        try:
            assert server.max_conns == DEFAULT_MAX_CONNS
        finally:
            server.close()
        for bad in (-1, 1.5, True, "5"):
            with pytest.raises(ValueError, match="max_conns"):
                ExecServer(loop, ("127.0.0.1", 0), ["cat"], max_conns=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_the_library_server_listens_on_loopback_unless_told(host: str) -> None:
    assert not is_loopback_host(host)
    with open_loop() as loop:
        with pytest.raises(ValueError, match=r"not a loopback address.*bind_public"):
            ExecServer(loop, (host, 0), ["cat"])
        server = ExecServer(loop, (host, 0), ["cat"], bind_public=True)
        try:
            assert server.address[0] == host
        finally:
            server.close()


def test_an_empty_host_is_judged_by_the_address_it_binds() -> None:
    """``""`` names this machine's addresses to ``getaddrinfo`` on Windows (loopback ones under
    Wine here, the network's on a real host) and nothing on Linux: the server checks the
    address it bound, never the name."""
    assert not is_loopback_host("")  # the command line never takes "" for loopback
    try:
        infos = socket.getaddrinfo("", 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        infos = []
    with open_loop() as loop:
        if not infos:
            with pytest.raises(socket.gaierror):
                ExecServer(loop, ("", 0), ["cat"])
            return
        first = ipaddress.ip_address(str(infos[0][4][0]).split("%")[0])
        if not first.is_loopback:
            with pytest.raises(ValueError, match="not a loopback address"):
                ExecServer(loop, ("", 0), ["cat"])
            return
        server = ExecServer(loop, ("", 0), ["cat"])
        try:
            assert ipaddress.ip_address(server.address[0]).is_loopback
        finally:
            server.close()


# -- the listener owns its port ------------------------------------------------------------------
@pytest.mark.windows
def test_the_windows_listener_has_exclusive_use_of_its_port() -> None:
    """With ``SO_EXCLUSIVEADDRUSE`` no other socket can bind the port, not even one with
    ``SO_REUSEADDR`` (which on Windows may otherwise bind a port in use and steal its
    clients): the bind fails with WSAEACCES. Wine refuses that bind even without the option
    (Linux rules), so there only the option read back shows it is set (ACTIVE_KB W8)."""
    assert sys.platform == "win32"  # the marker skips it elsewhere
    with open_loop() as loop:
        server = ExecServer(loop, ("127.0.0.1", 0), ["cat"], keep_open=True)
        try:
            listener = server._listener
            assert listener is not None
            exclusive = getattr(socket, "SO_EXCLUSIVEADDRUSE")  # noqa: B009 (Windows only)
            assert listener.getsockopt(socket.SOL_SOCKET, exclusive) == 1
            with socket.socket() as thief:
                thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                with pytest.raises(OSError) as refused:
                    thief.bind(server.address)
                assert getattr(refused.value, "winerror", None) == 10013  # WSAEACCES
        finally:
            server.close()
