"""Structure layouts equal the Windows x64 ones, on every platform."""

from __future__ import annotations

import ctypes
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afd import (
    AFD_POLL_HANDLE_INFO,
    AFD_POLL_INFO,
    NO_TIMEOUT,
    AfdPollEvents,
    build_poll_info,
    poll_info_type,
    read_poll_info,
)
from ntdll.structures import (
    FILE_IO_COMPLETION_INFORMATION,
    IO_STATUS_BLOCK,
    OBJECT_ATTRIBUTES,
    OVERLAPPED,
    UNICODE_STRING,
)

# (structure, size, {field: offset}) from the Windows SDK headers for x64.
LAYOUTS: list[tuple[type[ctypes.Structure], int, dict[str, int]]] = [
    (IO_STATUS_BLOCK, 16, {"Status": 0, "Pointer": 0, "Information": 8}),
    (UNICODE_STRING, 16, {"Length": 0, "MaximumLength": 2, "Buffer": 8}),
    (OBJECT_ATTRIBUTES, 48, {"Length": 0, "RootDirectory": 8, "ObjectName": 16,
                             "Attributes": 24, "SecurityDescriptor": 32,
                             "SecurityQualityOfService": 40}),
    (FILE_IO_COMPLETION_INFORMATION, 32, {"KeyContext": 0, "ApcContext": 8,
                                          "IoStatusBlock": 16}),
    (OVERLAPPED, 32, {"Internal": 0, "InternalHigh": 8, "Offset": 16, "OffsetHigh": 20,
                      "Pointer": 16, "hEvent": 24}),
    (AFD_POLL_HANDLE_INFO, 16, {"Handle": 0, "Events": 8, "Status": 12}),
    (AFD_POLL_INFO, 32, {"Timeout": 0, "NumberOfHandles": 8, "Exclusive": 12, "Handles": 16}),
]


@pytest.mark.parametrize(("structure", "size", "offsets"), LAYOUTS,
                         ids=[layout[0].__name__ for layout in LAYOUTS])
def test_layout(structure: type[ctypes.Structure], size: int, offsets: dict[str, int]) -> None:
    assert ctypes.sizeof(structure) == size
    for name, offset in offsets.items():
        assert getattr(structure, name).offset == offset, name


def test_io_status_block_status_is_signed_32_bits() -> None:
    block = IO_STATUS_BLOCK()
    block.Status = -1073741536  # STATUS_CANCELLED as a signed NTSTATUS
    assert bytes(block)[:4] == struct.pack("<I", 0xC0000120)


@given(st.integers(min_value=1, max_value=300))
def test_poll_info_with_n_handles_has_the_x64_size(count: int) -> None:
    layout = poll_info_type(count)
    assert ctypes.sizeof(layout) == 16 + 16 * count
    assert layout.Handles.offset == 16


def test_poll_info_needs_a_handle() -> None:
    with pytest.raises(ValueError, match="at least one handle"):
        build_poll_info([])
    with pytest.raises(ValueError, match="non-NULL"):
        build_poll_info([(0, AfdPollEvents.RECEIVE)])


handles = st.integers(min_value=1, max_value=2**64 - 1)
event_bits = st.integers(min_value=0, max_value=0x7FF)
entry_lists = st.lists(st.tuples(handles, event_bits), min_size=1, max_size=64)


@given(entry_lists, st.integers(min_value=-(2**63), max_value=2**63 - 1), st.booleans())
def test_poll_info_round_trip(entries: list[tuple[int, int]], timeout: int,
                              exclusive: bool) -> None:
    info = build_poll_info(entries, timeout=timeout, exclusive=exclusive)
    read = read_poll_info(info)
    assert [(entry.handle, int(entry.events)) for entry in read] == entries
    assert all(entry.status == 0 for entry in read)
    # The same bytes, decoded independently of ctypes with the documented x64 layout.
    raw = bytes(info)
    assert len(raw) == 16 + 16 * len(entries)
    decoded_timeout, count, decoded_exclusive = struct.unpack_from("<qII", raw, 0)
    assert (decoded_timeout, count, decoded_exclusive) == (timeout, len(entries), exclusive)
    for index, (handle, events) in enumerate(entries):
        assert struct.unpack_from("<QIi", raw, 16 + 16 * index) == (handle, events, 0)


def test_poll_info_reads_only_the_handles_the_kernel_reported() -> None:
    info = build_poll_info([(0x100, AfdPollEvents.RECEIVE), (0x104, AfdPollEvents.SEND)])
    info.NumberOfHandles = 1  # as the driver rewrites it: one handle fired
    assert read_poll_info(info) == [(0x100, AfdPollEvents.RECEIVE, 0)]


def test_default_timeout_is_never() -> None:
    assert build_poll_info([(4, 1)]).Timeout == NO_TIMEOUT == 2**63 - 1


def test_sockaddr_in_and_in6_have_the_windows_layout() -> None:
    """What ``ConnectEx`` reads: ``SOCKADDR_IN`` (family little-endian, port big-endian, the
    address, 8 zero bytes) and ``SOCKADDR_IN6`` (family, port, flowinfo, address, scope id);
    anything that is not a numeric address of the family is refused."""
    import socket

    from iocp.socket_io import sockaddr

    family4 = struct.pack("<H", socket.AF_INET)
    assert bytes(sockaddr(socket.AF_INET, ("127.0.0.1", 0x1234))) == (
        family4 + b"\x12\x34\x7f\x00\x00\x01" + bytes(8))
    family6 = struct.pack("<H", socket.AF_INET6)
    assert bytes(sockaddr(socket.AF_INET6, ("::1", 80, 7, 3))) == (
        family6 + b"\x00\x50" + b"\x00\x00\x00\x07" + bytes(15) + b"\x01" + b"\x03\x00\x00\x00")
    assert len(sockaddr(socket.AF_INET6, ("fe80::1", 1))) == 28
    for family, address in ((socket.AF_INET, ("localhost", 1)), (socket.AF_INET, ("::1", 1)),
                            (socket.AF_INET6, ("127.0.0.1", 1)), (-1, "/tmp/x"),
                            (socket.AF_INET, ("127.0.0.1", 70000))):
        with pytest.raises(ValueError):
            sockaddr(family, address)
