"""Helpers for the tests: counting the process's handles (Windows); a blocking peer that sends or
receives in pieces of random sizes, with random pauses (any platform)."""

from __future__ import annotations

import ctypes
import os
import random
import socket
import time

from ntdll import functions as nt
from ntdll.libraries import prototype
from ntdll.structures import NTSTATUS

SystemExtendedHandleInformation = 64
STATUS_INFO_LENGTH_MISMATCH = 0xC0000004


class SYSTEM_HANDLE_TABLE_ENTRY_INFO_EX(ctypes.Structure):
    _fields_ = [
        ("Object", ctypes.c_void_p),
        ("UniqueProcessId", ctypes.c_size_t),
        ("HandleValue", ctypes.c_size_t),
        ("GrantedAccess", ctypes.c_uint32),
        ("CreatorBackTraceIndex", ctypes.c_uint16),
        ("ObjectTypeIndex", ctypes.c_uint16),
        ("HandleAttributes", ctypes.c_uint32),
        ("Reserved", ctypes.c_uint32),
    ]


_NtQuerySystemInformation = prototype(
    "ntdll", "NtQuerySystemInformation", NTSTATUS,
    [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)],
)


def _count_from_system_table() -> int:
    size = 1 << 20
    while True:
        buffer = ctypes.create_string_buffer(size)
        needed = ctypes.c_uint32(0)
        status = _NtQuerySystemInformation(SystemExtendedHandleInformation, buffer, size,
                                           ctypes.byref(needed)) & 0xFFFFFFFF
        if status == STATUS_INFO_LENGTH_MISMATCH:
            size = max(size * 2, needed.value + 4096)
            continue
        if status != 0:
            raise OSError(f"NtQuerySystemInformation: status 0x{status:08X}")
        count = ctypes.c_size_t.from_buffer(buffer).value
        entries = (SYSTEM_HANDLE_TABLE_ENTRY_INFO_EX * count).from_buffer(buffer, 16)
        pid = os.getpid()
        return sum(1 for entry in entries if entry.UniqueProcessId == pid)


def process_handle_count() -> int:
    """How many handles this process has open.

    ``GetProcessHandleCount`` on Windows; Wine 8.0's returns 0 (a stub), so there the count is
    taken from the system handle table (``NtQuerySystemInformation``, class 64).
    """
    count = nt.GetProcessHandleCount()
    return count if count else _count_from_system_table()


def send_in_random_pieces(sock: socket.socket, data: bytes, *, seed: int, largest: int,
                          pause_chance: float, pause: float) -> None:
    """Send ``data`` in pieces of 1..``largest`` bytes (``sendall`` each), sleeping ``pause``
    seconds after a piece with probability ``pause_chance`` (the receiving side's next request
    then waits: pending and inline completions interleave), then ``SHUT_WR``. Seeded: the same
    pieces every run."""
    rng = random.Random(seed)
    sent = 0
    while sent < len(data):
        size = rng.randint(1, largest)
        sock.sendall(data[sent:sent + size])
        sent += size
        if rng.random() < pause_chance:
            time.sleep(pause)
    sock.shutdown(socket.SHUT_WR)


def receive_in_random_pieces(sock: socket.socket, into: bytearray, total: int, *, seed: int,
                             largest: int, pause_chance: float, pause: float) -> None:
    """Receive into ``into`` until it holds ``total`` bytes or the peer's end, asking for
    1..``largest`` bytes a time and sleeping ``pause`` seconds after a piece with probability
    ``pause_chance`` (the sending side's socket fills: its next send is pending). Seeded."""
    rng = random.Random(seed)
    while len(into) < total:
        piece = sock.recv(rng.randint(1, largest))
        if not piece:
            break
        into.extend(piece)
        if rng.random() < pause_chance:
            time.sleep(pause)
