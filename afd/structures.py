"""AFD poll structures (Windows x64 layouts) and building / reading them."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ntdll.structures import HANDLE, LARGE_INTEGER, NTSTATUS

from .flags import AfdPollEvents

__all__ = [
    "AFD_POLL_HANDLE_INFO",
    "AFD_POLL_INFO",
    "NO_TIMEOUT",
    "PollEntry",
    "build_poll_info",
    "poll_info_type",
    "read_poll_info",
]

NO_TIMEOUT = 0x7FFFFFFFFFFFFFFF
"""``AFD_POLL_INFO.Timeout`` for "never time out" (the largest LARGE_INTEGER)."""


class AFD_POLL_HANDLE_INFO(ctypes.Structure):
    """One polled socket (16 bytes): its base handle, the events asked for / reported, and
    the per-handle status."""

    _fields_ = [("Handle", HANDLE), ("Events", ctypes.c_uint32), ("Status", NTSTATUS)]


class AFD_POLL_INFO(ctypes.Structure):
    """``AFD_POLL_INFO`` with one handle (32 bytes). See :func:`poll_info_type` for N."""

    _fields_ = [
        ("Timeout", LARGE_INTEGER),
        ("NumberOfHandles", ctypes.c_uint32),
        ("Exclusive", ctypes.c_uint32),
        ("Handles", AFD_POLL_HANDLE_INFO * 1),
    ]


@functools.lru_cache(maxsize=64)
def poll_info_type(count: int) -> type[ctypes.Structure]:
    """The ``AFD_POLL_INFO`` layout with room for ``count`` handles (``count >= 1``)."""
    if count < 1:
        raise ValueError(f"an AFD poll needs at least one handle, not {count}")
    if count == 1:
        return AFD_POLL_INFO
    return type(f"AFD_POLL_INFO_{count}", (ctypes.Structure,), {
        "_fields_": [
            ("Timeout", LARGE_INTEGER),
            ("NumberOfHandles", ctypes.c_uint32),
            ("Exclusive", ctypes.c_uint32),
            ("Handles", AFD_POLL_HANDLE_INFO * count),
        ],
    })


class PollEntry(NamedTuple):
    """One socket in a poll: the base handle, the events, and (on output) its NTSTATUS."""

    handle: int
    events: AfdPollEvents
    status: int = 0


def build_poll_info(entries: Sequence[tuple[int, int]] | Iterable[tuple[int, int]],
                    timeout: int = NO_TIMEOUT, exclusive: bool = False) -> ctypes.Structure:
    """An ``AFD_POLL_INFO`` asking for ``events`` on each ``(base_handle, events)``.

    ``timeout`` is an NT time (negative: relative, in 100-ns units; ``NO_TIMEOUT``: never).
    """
    items = list(entries)
    info = poll_info_type(len(items))()
    info.Timeout = timeout
    info.NumberOfHandles = len(items)
    info.Exclusive = int(exclusive)
    for slot, (handle, events) in zip(info.Handles, items, strict=True):
        if not handle:
            raise ValueError("an AFD poll entry needs a non-NULL base socket handle")
        slot.Handle = handle
        slot.Events = int(events)
        slot.Status = 0
    return info


def read_poll_info(info: ctypes.Structure) -> list[PollEntry]:
    """The entries the kernel reported: ``NumberOfHandles`` is rewritten to how many fired."""
    count = min(info.NumberOfHandles, len(info.Handles))
    return [
        PollEntry(slot.Handle or 0, AfdPollEvents(slot.Events), slot.Status & 0xFFFFFFFF)
        for slot in info.Handles[:count]
    ]
