"""The optional C speedups (``_ntafd_speedups``, a cffi API-mode extension) of the hot paths.

``iocp`` and ``afd`` have one interface and two implementations of their hot paths (dequeue a
batch, issue an AFD poll, cancel, read a poll's events): pure ctypes, or these C functions.
The extension is used when it imports (it is optional: ``pip install .[speedups]`` on Windows,
``tools/build-speedups.sh`` here); ``NTAFD_PURE_CTYPES=1`` forces pure ctypes.

The C functions take the *addresses* of ctypes objects that the caller owns (an operation's
``OVERLAPPED``, its ``AFD_POLL_INFO``): this module is the only place where addresses cross into
C, and none is returned. The memory rules are the pure implementation's (ACTIVE_KB D2-D5): the
owner keeps the memory alive until the request's completion has been dequeued.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import sys
import threading
from typing import Any

from . import status as _status
from .structures import FILE_IO_COMPLETION_INFORMATION, OVERLAPPED

__all__ = [
    "ABI_VERSION",
    "IMPLEMENTATION",
    "LOAD_ERROR",
    "MODULE",
    "PURE_ENV",
    "NativeBatch",
    "NativeCalls",
    "SpeedupsAssertionError",
    "native",
]

MODULE = "_ntafd_speedups"
"""The extension's module name (top-level, so a build folder can be put on ``sys.path``)."""
PURE_ENV = "NTAFD_PURE_CTYPES"
"""Set to ``1`` to force the pure-ctypes implementation."""
ABI_VERSION = 2
"""The ``ntafd_abi_version()`` this module was written for (a stale build is not used)."""

# Statuses of our own (customer bit set), returned by the C functions.
STATUS_NOT_INITIALISED = 0xE0AF0000
STATUS_ASSERT_BUSY = 0xE0AF0001
STATUS_ASSERT_COUNT = 0xE0AF0002
STATUS_ASSERT_ALIGN = 0xE0AF0003
STATUS_ASSERT_RELAY = 0xE0AF0004
_ASSERTIONS = {
    STATUS_ASSERT_RELAY: "a relay step's invariant broke (its request table, counts or state)",
    STATUS_ASSERT_BUSY: "a request was issued again while the kernel still owns its memory",
    STATUS_ASSERT_COUNT: "the kernel reported more completions than there was room for",
    STATUS_ASSERT_ALIGN: "a kernel buffer is not 8-byte aligned",
}


class SpeedupsAssertionError(AssertionError):
    """An internal assertion of the Debug build of the speedups failed (a bug in ntafd)."""


def _raise_for(status: int, function: str) -> None:
    unsigned = status & 0xFFFFFFFF
    message = _ASSERTIONS.get(unsigned)
    if message is not None:
        raise SpeedupsAssertionError(f"{function}: {message} (0x{unsigned:08X})")
    if unsigned == STATUS_NOT_INITIALISED:
        raise RuntimeError(f"{function}: the speedups were used before ntafd_init()")
    raise _status.NtStatusError(status, function)


class NativeBatch:
    """C memory one (port, thread) dequeues into: decoded entries and their count.

    The count is written by the C call and cleared by :meth:`release` once every entry was
    handed over; a count still set on the next dequeue means an exception interrupted the
    hand-over, and :meth:`leftover` returns that batch again.
    """

    __slots__ = ("capacity", "count", "decoded")

    def __init__(self, decoded: Any, count: Any, capacity: int) -> None:
        self.decoded = decoded
        self.count = count
        self.capacity = capacity

    def leftover(self, ffi: Any) -> list[int] | None:
        removed: int = self.count[0]
        if not removed:
            return None
        result: list[int] = ffi.unpack(self.decoded, 4 * removed)
        return result

    def release(self) -> None:
        self.count[0] = 0


class NativeCalls:
    """The C implementation of the hot paths, over a loaded ``_ntafd_speedups``."""

    def __init__(self, module: Any) -> None:
        self._ffi = module.ffi
        self._lib = module.lib
        version = getattr(self._lib, "ntafd_abi_version", lambda: 0)()
        if version != ABI_VERSION:
            raise ImportError(f"{MODULE} is a stale build (ABI {version}, this ntafd wants "
                              f"{ABI_VERSION}): rebuild it")
        self.debug = bool(self._lib.ntafd_debug())
        self._local = threading.local()
        if self._lib.ntafd_init() != 0:
            raise ImportError("_ntafd_speedups: ntdll lacks a function it needs")

    @property
    def ffi(self) -> Any:
        """The extension's ``FFI`` (its cdef'd structures): for the layout checks."""
        return self._ffi

    def _buffers(self, max_entries: int) -> tuple[Any, Any]:
        local = self._local
        decoded = getattr(local, "decoded", None)
        if decoded is None or local.capacity < max_entries:
            local.decoded = decoded = self._ffi.new("uint64_t[]", 4 * max_entries)
            local.capacity = max_entries
            local.count = self._ffi.new("uint32_t *")
        return decoded, local.count

    def remove_completions(self, port: int, max_entries: int, timeout: int | None) -> list[int]:
        """``NtRemoveIoCompletionEx`` into C memory, decoded in C: a flat list of
        ``key, apc_context, status (unsigned), information`` per completion; ``[]`` on
        timeout. ``timeout`` as :func:`ntdll.functions.NtRemoveIoCompletionEx`. The GIL is
        released while waiting."""
        decoded, count = self._buffers(max_entries)
        return self._remove(port, max_entries, timeout, decoded, count)

    def new_batch(self, capacity: int) -> NativeBatch:
        """Memory for :meth:`remove_into`: decoded entries for ``capacity`` completions."""
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        return NativeBatch(self._ffi.new("uint64_t[]", 4 * capacity),
                           self._ffi.new("uint32_t *"), capacity)

    def remove_into(self, port: int, batch: NativeBatch, max_entries: int,
                    timeout: int | None) -> list[int]:
        """As :meth:`remove_completions`, into ``batch``, whose count stays set until
        :meth:`NativeBatch.release`: a batch whose hand-over an exception interrupted is
        found again by :meth:`NativeBatch.leftover`. Never call it while one is left over
        (the C resets the count first)."""
        if not 1 <= max_entries <= batch.capacity:
            raise ValueError(f"max_entries {max_entries} outside 1..{batch.capacity}")
        return self._remove(port, max_entries, timeout, batch.decoded, batch.count)

    def _remove(self, port: int, max_entries: int, timeout: int | None, decoded: Any,
                count: Any) -> list[int]:
        status: int = self._lib.ntafd_remove_completions(
            port, max_entries, timeout is not None, timeout or 0, decoded, count)
        if status < 0:
            _raise_for(status, "NtRemoveIoCompletionEx")
        removed: int = count[0]
        if not removed:
            return []
        result: list[int] = self._ffi.unpack(decoded, 4 * removed)
        return result

    def decode_completions(self, entries: ctypes.Array[FILE_IO_COMPLETION_INFORMATION],
                           count: int) -> list[int]:
        """Decode, as :meth:`remove_completions` does, ``count`` entries already written into
        ``entries`` (no kernel call: for measuring the decoding alone)."""
        if not 0 <= count <= len(entries):
            raise ValueError(f"count {count} outside 0..{len(entries)}")
        decoded, _count = self._buffers(max(count, 1))
        self._lib.ntafd_decode_completions(ctypes.addressof(entries), count, decoded)
        result: list[int] = self._ffi.unpack(decoded, 4 * count)
        return result

    def afd_poll(self, helper: int, overlapped: OVERLAPPED, info: ctypes.Structure,
                 base_handle: int, events: int, timeout: int, exclusive: bool) -> int:
        """Fill the one-handle ``AFD_POLL_INFO`` ``info`` and issue ``IOCTL_AFD_POLL`` on
        ``helper`` with ``overlapped`` as status block and ``ApcContext``. Returns the status;
        raises ``NtStatusError`` for an error status (then no completion is queued)."""
        if ctypes.sizeof(info) < 32:
            raise ValueError("an AFD_POLL_INFO with room for one handle is needed")
        status: int = self._lib.ntafd_afd_poll(helper, ctypes.addressof(overlapped),
                                          ctypes.addressof(info), base_handle, events,
                                          timeout, int(exclusive))
        if status < 0 and _status.is_error(status):
            _raise_for(status, "NtDeviceIoControlFile")
        return status & 0xFFFFFFFF

    def afd_poll_events(self, info: ctypes.Structure) -> int:
        """The OR of the events a completed poll reported."""
        capacity = (ctypes.sizeof(info) - 16) // 16
        events: int = self._lib.ntafd_afd_poll_events(ctypes.addressof(info), capacity)
        return events

    def cancel(self, handle: int, overlapped: OVERLAPPED) -> bool:
        """``NtCancelIoFileEx`` if the request's status block still reads ``STATUS_PENDING``;
        ``False`` if it has completed (``STATUS_NOT_FOUND``)."""
        status: int = self._lib.ntafd_cancel(handle, ctypes.addressof(overlapped))
        if status & 0xFFFFFFFF == _status.STATUS_NOT_FOUND:
            return False
        if not _status.is_success(status):
            _raise_for(status, "NtCancelIoFileEx")
        return True

    # -- the relay step (iocp.c_relay owns what these return) ---------------------------------
    def relay_set_new(self, port: int, budget: int) -> int:
        """A relay set for ``port`` (C memory; ``iocp.port`` owns it). ``budget``: inline
        completions one dequeue continues before posting the next to the port."""
        address: int = self._lib.ntafd_relay_set_new(port, budget)
        if not address:
            raise MemoryError("ntafd_relay_set_new: no memory, or ws2_32 lacks a function")
        return address

    def relay_set_pending(self, relay_set: int) -> int:
        """How many of the set's requests await their completion."""
        pending: int = self._lib.ntafd_relay_set_pending(relay_set)
        return pending

    def relay_set_cancel(self, relay_set: int) -> None:
        """Cancel every pending request of the set's relays (each then reports STOPPED, or
        is freed if it was closed)."""
        self._lib.ntafd_relay_set_cancel(relay_set)

    def relay_set_free(self, relay_set: int) -> int:
        """Free the set if nothing of it is pending, and return 0; else keep it (the kernel may
        still write into its relays) and return how many requests are pending."""
        left: int = self._lib.ntafd_relay_set_free(relay_set)
        return left

    def relay_open(self, relay_set: int, token: int, src: int, src_socket: bool,
                   src_skip: bool, dst: int, dst_socket: bool, dst_skip: bool,
                   size: int, give_full: bool = False, give_small: int = 0) -> int:
        """A relay (one direction, ``src`` -> ``dst``, C memory) in ``relay_set``;
        ``give_full``: end (FULL) after a read that filled its buffer, ``give_small``: (SMALL)
        after a read of fewer bytes, holding the bytes."""
        address: int = self._lib.ntafd_relay_open(relay_set, token, src, int(src_socket),
                                                  int(src_skip), dst, int(dst_socket),
                                                  int(dst_skip), size, int(give_full),
                                                  give_small)
        if not address:
            raise MemoryError(f"ntafd_relay_open: no memory for a {size}-byte relay")
        return address

    def relay_run(self, relay: int) -> None:
        """Hand the relay to C (it must be idle, holding no bytes)."""
        status: int = self._lib.ntafd_relay_run(relay)
        if status:
            _raise_for(status, "ntafd_relay_run")

    def relay_stop(self, relay: int) -> bool:
        """Ask C to give the relay back (a STOPPED event follows); ``False`` if it was not
        running."""
        return bool(self._lib.ntafd_relay_stop(relay))

    def relay_info(self, relay: int) -> list[int]:
        """``[state, event, status, bytes written, bytes held, pending, inline, dequeued,
        failed request (0 read, 1 write)]``."""
        out = self._ffi.new("uint64_t[9]")
        status: int = self._lib.ntafd_relay_info(relay, out)
        if status:
            _raise_for(status, "ntafd_relay_info")
        result: list[int] = self._ffi.unpack(out, 9)
        return result

    def relay_take(self, relay: int) -> bytes:
        """After its event: the bytes the relay read but did not write; it is idle again."""
        held = self.relay_info(relay)[4]
        out = self._ffi.new("char[]", max(held, 1))
        taken: int = self._lib.ntafd_relay_take(relay, out, held)
        if taken < 0:
            raise _status.NtStatusError(STATUS_ASSERT_RELAY, "ntafd_relay_take")
        data: bytes = self._ffi.unpack(out, taken)
        return data

    def relay_close(self, relay: int) -> bool:
        """Give the relay up: ``True`` if freed now, ``False`` if the dequeue that sees its
        last completion frees it."""
        result: int = self._lib.ntafd_relay_close(relay)
        if result < 0:
            raise SpeedupsAssertionError("ntafd_relay_close: not a live relay")
        return bool(result)

    def relay_remove_into(self, relay_set: int, batch: NativeBatch, max_entries: int,
                          timeout: int | None) -> list[int]:
        """:meth:`remove_into` for a port with relays: their completions are continued in C,
        and each relay event is one decoded entry (key = its token, ApcContext 0, status = the
        event, information = bytes written). ``[]`` may also mean the C step ran out of kernel
        calls for this turn."""
        if not 1 <= max_entries <= batch.capacity:
            raise ValueError(f"max_entries {max_entries} outside 1..{batch.capacity}")
        status: int = self._lib.ntafd_relay_remove_completions(
            relay_set, max_entries, timeout is not None, timeout or 0, batch.decoded,
            batch.count)
        if status < 0:
            _raise_for(status, "NtRemoveIoCompletionEx")
        removed: int = batch.count[0]
        if not removed:
            return []
        result: list[int] = self._ffi.unpack(batch.decoded, 4 * removed)
        return result

    def in_flight(self, overlapped: OVERLAPPED) -> bool | None:
        """Debug build: whether a request issued here on ``overlapped`` awaits its dequeue.
        ``None`` in the optimized build, which does not track requests."""
        found = self._lib.ntafd_in_flight(ctypes.addressof(overlapped))
        return None if found < 0 else bool(found)


def _load() -> tuple[NativeCalls | None, str | None]:
    if os.environ.get(PURE_ENV) == "1":
        return None, f"{PURE_ENV}=1"
    if sys.platform != "win32":
        return None, f"no NT calls on {sys.platform}"
    try:
        return NativeCalls(importlib.import_module(MODULE)), None
    except ImportError as exc:  # not built, or cffi's runtime missing: pure ctypes
        return None, f"{type(exc).__name__}: {exc}"


native, LOAD_ERROR = _load()
"""The C implementation, or ``None`` (then ``LOAD_ERROR`` says why) for pure ctypes."""

IMPLEMENTATION = ("ctypes" if native is None
                  else "cffi-debug" if native.debug else "cffi-optimized")
"""``"ctypes"``, ``"cffi-debug"`` or ``"cffi-optimized"``: what this process uses."""
