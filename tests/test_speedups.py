"""The optional C speedups: which implementation a leg loaded, the cdef's layouts against the
ctypes ones, forcing pure ctypes, and the Debug build's assertions.

The rest of the suite runs unchanged in every leg, so each test of the port, the polls and the
poller checks whichever implementation the leg loaded.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import socket
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afd import (
    AFD_POLL_HANDLE_INFO,
    AFD_POLL_INFO,
    AfdHelperHandle,
    AfdPollEvents,
    AfdPollOperation,
    base_socket_handle,
    build_poll_info,
)
from iocp import Completion, CompletionPort
from iocp.port import decode_entries
from ntdll import speedups
from ntdll.structures import FILE_IO_COMPLETION_INFORMATION, IO_STATUS_BLOCK, OVERLAPPED

EXPECT_ENV = "NTAFD_EXPECT_IMPLEMENTATION"
IMPLEMENTATIONS = ("ctypes", "cffi-debug", "cffi-optimized")

# cdef name -> the hand-written ctypes layout it must equal, and the fields to compare.
PAIRS: list[tuple[str, type[ctypes.Structure], tuple[str, ...]]] = [
    ("NTAFD_IO_STATUS_BLOCK", IO_STATUS_BLOCK, ("Status", "Pointer", "Information")),
    ("NTAFD_FILE_IO_COMPLETION_INFORMATION", FILE_IO_COMPLETION_INFORMATION,
     ("KeyContext", "ApcContext", "IoStatusBlock")),
    ("NTAFD_OVERLAPPED", OVERLAPPED,
     ("Internal", "InternalHigh", "Offset", "OffsetHigh", "Pointer", "hEvent")),
    ("NTAFD_AFD_POLL_HANDLE_INFO", AFD_POLL_HANDLE_INFO, ("Handle", "Events", "Status")),
    ("NTAFD_AFD_POLL_INFO", AFD_POLL_INFO,
     ("Timeout", "NumberOfHandles", "Exclusive", "Handles")),
]


def _ctypes_field_size(structure: type[ctypes.Structure], name: str) -> int:
    field: Any = getattr(structure, name)
    size: int = field.size
    return size


def _check_layouts(ffi: Any) -> None:
    for cdef_name, structure, fields in PAIRS:
        assert ffi.sizeof(cdef_name) == ctypes.sizeof(structure), cdef_name
        assert ffi.alignof(cdef_name) == ctypes.alignment(structure), cdef_name
        c_fields = dict(ffi.typeof(cdef_name).fields)
        for name in fields:
            ctypes_offset = getattr(structure, name).offset
            assert ffi.offsetof(cdef_name, name) == ctypes_offset, f"{cdef_name}.{name}"
            if name in c_fields:  # a named field (not one inside an anonymous union)
                assert ffi.sizeof(c_fields[name].type) == _ctypes_field_size(
                    structure, name), f"{cdef_name}.{name}"


def test_the_expected_implementation_is_loaded() -> None:
    """A leg that expects the speedups fails here if it silently fell back to ctypes."""
    expected = os.environ.get(EXPECT_ENV)
    if expected is not None:
        assert speedups.IMPLEMENTATION == expected, speedups.LOAD_ERROR
    elif sys.platform != "win32" or os.environ.get(speedups.PURE_ENV) == "1":
        assert speedups.IMPLEMENTATION == "ctypes"
        assert speedups.native is None and speedups.LOAD_ERROR
    else:
        assert speedups.IMPLEMENTATION in IMPLEMENTATIONS


@pytest.mark.parametrize("lib", [SimpleNamespace(ntafd_abi_version=lambda: 0),
                                 SimpleNamespace()], ids=["older ABI", "before versions"])
def test_a_stale_build_is_refused(lib: SimpleNamespace) -> None:
    """A build of other C functions than this Python expects is not used (an ImportError,
    which the loader turns into pure ctypes and names in LOAD_ERROR)."""
    with pytest.raises(ImportError, match="stale build"):
        speedups.NativeCalls(SimpleNamespace(ffi=None, lib=lib))


def test_the_cdef_layouts_equal_the_ctypes_layouts_as_cffi_computes_them() -> None:
    """The builder's cdef, laid out by cffi itself (no C compiler): every platform with cffi."""
    try:
        build = importlib.import_module("speedups.build")
    except ImportError as error:  # never a silent skip: every leg installs cffi
        pytest.fail(f"speedups.build needs cffi ({error}): tools/install-linux.sh installs it "
                    "in the venv, tools/install-wine-python.sh for the Windows python")
    _check_layouts(build.ffi)


@pytest.mark.cffi
def test_the_c_compilers_layouts_equal_the_ctypes_layouts() -> None:
    """The compiled module's sizes and offsets are the C compiler's (cffi verified them against
    the C definitions when it was built): each layout is checked against the other."""
    assert speedups.native is not None
    _check_layouts(speedups.native.ffi)


@pytest.mark.windows
def test_pure_ctypes_can_be_forced() -> None:
    code = "from ntdll import speedups; print(speedups.IMPLEMENTATION)"
    env = dict(os.environ, **{speedups.PURE_ENV: "1"})
    forced = subprocess.run([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120, check=True)
    assert forced.stdout.strip() == "ctypes"
    env.pop(speedups.PURE_ENV)
    default = subprocess.run([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=120, check=True)
    assert default.stdout.strip() == speedups.IMPLEMENTATION


@pytest.mark.cffi
def test_c_poll_cancel_and_dequeue_round_trip(connected_pair: tuple[socket.socket,
                                                                    socket.socket]) -> None:
    """The C functions on their own: a poll issued in C, cancelled in C (a second cancel finds
    nothing), its cancellation dequeued and decoded in C."""
    native = speedups.native
    assert native is not None
    first, _second = connected_pair
    overlapped = OVERLAPPED()
    info = AFD_POLL_INFO()
    with CompletionPort() as port, AfdHelperHandle(port, key=7) as helper:
        status = native.afd_poll(helper.handle, overlapped, info, base_socket_handle(first),
                                 int(AfdPollEvents.RECEIVE), 2**63 - 1, False)
        assert status == 0x103  # STATUS_PENDING
        assert native.cancel(helper.handle, overlapped) is True
        flat: list[int] = []
        for _ in range(100):
            flat = native.remove_completions(port.handle, 8, -10_000_000)
            if flat:
                break
        assert flat == [7, ctypes.addressof(overlapped), 0xC0000120, 0]  # STATUS_CANCELLED
        assert native.cancel(helper.handle, overlapped) is False  # completed: not pending
        assert native.remove_completions(port.handle, 8, 0) == []  # STATUS_TIMEOUT


@pytest.mark.cffi_debug
def test_debug_build_refuses_a_request_issued_again_while_pending(
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    """The Debug build tracks requests issued in C until their completion is dequeued: issuing
    the same memory again meanwhile raises instead of handing it to the kernel twice."""
    native = speedups.native
    assert native is not None and native.debug
    first, _second = connected_pair
    overlapped = OVERLAPPED()
    info = AFD_POLL_INFO()
    base = base_socket_handle(first)
    with CompletionPort() as port, AfdHelperHandle(port, key=7) as helper:
        assert native.in_flight(overlapped) is False
        native.afd_poll(helper.handle, overlapped, info, base, 1, 2**63 - 1, False)
        assert native.in_flight(overlapped) is True
        with pytest.raises(speedups.SpeedupsAssertionError, match="issued again"):
            native.afd_poll(helper.handle, overlapped, info, base, 1, 2**63 - 1, False)
        assert native.cancel(helper.handle, overlapped) is True
        for _ in range(100):
            if native.remove_completions(port.handle, 8, -10_000_000):
                break
        assert native.in_flight(overlapped) is False


@pytest.mark.cffi
def test_optimized_build_does_not_track_requests() -> None:
    native = speedups.native
    assert native is not None
    assert native.in_flight(OVERLAPPED()) is (False if native.debug else None)


u64 = st.integers(min_value=0, max_value=2**64 - 1)
# key, the whole first word of the status block (the status in its low half, the rest of the
# union's Pointer member above it), information
raw_entries = st.lists(st.tuples(u64, u64, u64), min_size=1, max_size=64)


@pytest.mark.cffi
@settings(max_examples=50, deadline=None)
@given(raw_entries)
def test_both_decoders_make_the_same_completions(entries: list[tuple[int, int, int]]) -> None:
    """One interface, two implementations: the same entries, as the kernel writes them, give
    equal completions through the ctypes decoding and the C decoding."""
    native = speedups.native
    assert native is not None
    view = (FILE_IO_COMPLETION_INFORMATION * len(entries))()
    words = (ctypes.c_uint64 * (4 * len(entries))).from_buffer(view)
    for index, (key, first_word, information) in enumerate(entries):
        words[4 * index:4 * index + 4] = [key, 0, first_word, information]
    assert decode_entries(view, len(entries)) == native.decode_completions(view, len(entries))
    with CompletionPort() as port:
        by_ctypes: list[Completion] = []
        port._hand_over(decode_entries(view, len(entries)), by_ctypes, recovering=False)
        by_c: list[Completion] = []
        port._hand_over(native.decode_completions(view, len(entries)), by_c, recovering=False)
    assert by_c == by_ctypes
    assert [c.key for c in by_c] == [key for key, _, _ in entries]
    assert [c.information for c in by_c] == [information for _, _, information in entries]
    assert [c.status for c in by_c] == [word & 0xFFFFFFFF for _, word, _ in entries]


poll_entries = st.lists(st.tuples(st.integers(min_value=1, max_value=2**64 - 1),
                                  st.integers(min_value=0, max_value=0x7FF)),
                        min_size=1, max_size=16)


@pytest.mark.cffi
@settings(max_examples=50, deadline=None)
@given(poll_entries, st.integers(min_value=0, max_value=20))
def test_both_implementations_read_the_same_poll_events(entries: list[tuple[int, int]],
                                                        reported: int) -> None:
    """The OR of the events the kernel reported, read by ctypes and by C, for any count the
    kernel may have rewritten ``NumberOfHandles`` to (more than the room: capped)."""
    native = speedups.native
    assert native is not None
    info = build_poll_info(entries)
    info.NumberOfHandles = reported
    expected = 0
    for _handle, events in entries[:reported]:
        expected |= events
    assert native.afd_poll_events(info) == expected
    operation = AfdPollOperation(None, info)
    operation._complete(0, ctypes.sizeof(info))  # as the port does on dequeue
    assert operation.reported_events() == expected


@pytest.mark.windows
def test_the_status_block_is_final_when_the_completion_is_dequeued(
        connected_pair: tuple[socket.socket, socket.socket]) -> None:
    """What D5 (and ntafd_cancel, which reads the block in C) rely on: once a request's
    completion is dequeued, its status block no longer reads STATUS_PENDING but the final
    status and information, for a poll that fired and for one that was cancelled."""
    first, second = connected_pair
    base = base_socket_handle(first)
    with CompletionPort() as port, AfdHelperHandle(port, key=7) as helper:
        fired = helper.poll([(base, AfdPollEvents.RECEIVE)])
        cancelled = helper.poll([(base_socket_handle(second), AfdPollEvents.RECEIVE)])
        assert fired.pending and cancelled.pending
        second.send(b"x")
        assert helper.cancel(cancelled) is True
        done: dict[int, int] = {}
        for _ in range(100):
            for completion in port.dequeue(timeout=0.1):
                done[completion.apc_context] = completion.status
            if len(done) == 2:
                break
        for operation in (fired, cancelled):
            block = operation._overlapped
            assert block.Internal & 0xFFFFFFFF == done[operation.apc_context]
            assert block.InternalHigh == operation.information
        assert done[fired.apc_context] == 0
        assert done[cancelled.apc_context] == 0xC0000120  # STATUS_CANCELLED
