"""NT structures with explicit-width fields: the Windows x64 layout on every platform.

Every field is declared with a fixed-size ctypes type (``c_int32``, ``c_uint32``, ``c_uint64``,
``c_void_p``...), never ``ctypes.wintypes.LONG``/``ULONG`` (which are C ``long``: 8 bytes on Linux,
4 on Windows), so sizes and offsets can be tested on Linux too. The layout assumes a 64-bit process,
the only kind this project supports.
"""

from __future__ import annotations

import ctypes

__all__ = [
    "FILE_IO_COMPLETION_INFORMATION",
    "HANDLE",
    "IO_COUNTERS",
    "IO_STATUS_BLOCK",
    "JOBOBJECT_BASIC_LIMIT_INFORMATION",
    "JOBOBJECT_EXTENDED_LIMIT_INFORMATION",
    "LARGE_INTEGER",
    "NTSTATUS",
    "OBJECT_ATTRIBUTES",
    "OVERLAPPED",
    "ULONG_PTR",
    "UNICODE_STRING",
    "WSABUF",
]

if ctypes.sizeof(ctypes.c_void_p) != 8:  # pragma: no cover - 32-bit interpreters
    raise ImportError("ntafd supports 64-bit Python only (Windows x64 structure layouts)")

NTSTATUS = ctypes.c_int32
"""An NTSTATUS: signed 32 bits; negative values are errors or warnings."""
HANDLE = ctypes.c_void_p
ULONG_PTR = ctypes.c_uint64
LARGE_INTEGER = ctypes.c_int64


class _IoStatusUnion(ctypes.Union):
    _fields_ = [("Status", NTSTATUS), ("Pointer", ctypes.c_void_p)]


class IO_STATUS_BLOCK(ctypes.Structure):
    """``IO_STATUS_BLOCK`` (16 bytes): the final status and the byte count of an I/O request.

    The kernel writes it when the request completes, which may be long after the call that
    issued it returned: the memory must stay alive (and unmoved) until then.
    """

    _anonymous_ = ("_u",)
    _fields_ = [("_u", _IoStatusUnion), ("Information", ULONG_PTR)]


class UNICODE_STRING(ctypes.Structure):
    """``UNICODE_STRING`` (16 bytes): lengths are in bytes, without a terminating NUL."""

    _fields_ = [
        ("Length", ctypes.c_uint16),
        ("MaximumLength", ctypes.c_uint16),
        ("Buffer", ctypes.c_wchar_p),
    ]


class OBJECT_ATTRIBUTES(ctypes.Structure):
    """``OBJECT_ATTRIBUTES`` (48 bytes): names an object for the ``NtCreate*`` calls."""

    _fields_ = [
        ("Length", ctypes.c_uint32),
        ("RootDirectory", HANDLE),
        ("ObjectName", ctypes.POINTER(UNICODE_STRING)),
        ("Attributes", ctypes.c_uint32),
        ("SecurityDescriptor", ctypes.c_void_p),
        ("SecurityQualityOfService", ctypes.c_void_p),
    ]


class FILE_IO_COMPLETION_INFORMATION(ctypes.Structure):
    """One entry dequeued by ``NtRemoveIoCompletionEx`` (32 bytes).

    ``KeyContext`` is the key the handle was associated with (or the one posted), ``ApcContext``
    the value passed as ``ApcContext`` when the I/O was issued (for Win32 overlapped I/O, the
    ``OVERLAPPED`` address), and ``IoStatusBlock`` a copy of the request's final status.
    """

    _fields_ = [
        ("KeyContext", ctypes.c_void_p),
        ("ApcContext", ctypes.c_void_p),
        ("IoStatusBlock", IO_STATUS_BLOCK),
    ]


class _OverlappedOffset(ctypes.Structure):
    _fields_ = [("Offset", ctypes.c_uint32), ("OffsetHigh", ctypes.c_uint32)]


class _OverlappedUnion(ctypes.Union):
    _anonymous_ = ("_s",)
    _fields_ = [("_s", _OverlappedOffset), ("Pointer", ctypes.c_void_p)]


class OVERLAPPED(ctypes.Structure):
    """Win32 ``OVERLAPPED`` (32 bytes).

    Its first 16 bytes *are* an ``IO_STATUS_BLOCK``: ``Internal`` is the NTSTATUS and
    ``InternalHigh`` the byte count. The kernel writes them when the request completes.
    """

    _anonymous_ = ("_u",)
    _fields_ = [
        ("Internal", ULONG_PTR),
        ("InternalHigh", ULONG_PTR),
        ("_u", _OverlappedUnion),
        ("hEvent", HANDLE),
    ]


class JOBOBJECT_BASIC_LIMIT_INFORMATION(ctypes.Structure):
    """``JOBOBJECT_BASIC_LIMIT_INFORMATION`` (64 bytes); ``LimitFlags`` at offset 16."""

    _fields_ = [
        ("PerProcessUserTimeLimit", LARGE_INTEGER),
        ("PerJobUserTimeLimit", LARGE_INTEGER),
        ("LimitFlags", ctypes.c_uint32),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", ctypes.c_uint32),
        ("Affinity", ULONG_PTR),
        ("PriorityClass", ctypes.c_uint32),
        ("SchedulingClass", ctypes.c_uint32),
    ]


class IO_COUNTERS(ctypes.Structure):
    """``IO_COUNTERS`` (48 bytes)."""

    _fields_ = [(name, ctypes.c_uint64) for name in (
        "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
        "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]


class JOBOBJECT_EXTENDED_LIMIT_INFORMATION(ctypes.Structure):
    """``JOBOBJECT_EXTENDED_LIMIT_INFORMATION`` (144 bytes), for ``SetInformationJobObject``
    with ``JobObjectExtendedLimitInformation`` (9), e.g. to set ``KILL_ON_JOB_CLOSE``."""

    _fields_ = [
        ("BasicLimitInformation", JOBOBJECT_BASIC_LIMIT_INFORMATION),
        ("IoInfo", IO_COUNTERS),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


class WSABUF(ctypes.Structure):
    """``WSABUF`` (16 bytes): ``len`` (ULONG) then, after padding, ``buf`` (a pointer)."""

    _fields_ = [("len", ctypes.c_uint32), ("buf", ctypes.c_void_p)]
