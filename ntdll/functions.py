"""Typed wrappers over the NT native API and the few Win32 calls the project needs.

Each wrapper calls one function and checks its result, nothing more: a failing NTSTATUS raises
:class:`~ntdll.status.NtStatusError`, a failing Win32 call raises ``OSError`` with ``winerror``
set and the function named. Out-parameters become return values. Structures the kernel writes
into *later* (an ``IO_STATUS_BLOCK`` of a pending request...) are passed in by the caller, who
must keep them alive until the request completes: the ``iocp`` layer owns that rule.
"""

from __future__ import annotations

import ctypes
import sys
from typing import TYPE_CHECKING, Any, TypeAlias

from . import status as _status
from .libraries import prototype
from .structures import (
    FILE_IO_COMPLETION_INFORMATION,
    HANDLE,
    IO_STATUS_BLOCK,
    LARGE_INTEGER,
    NTSTATUS,
    OBJECT_ATTRIBUTES,
    OVERLAPPED,
    ULONG_PTR,
    UNICODE_STRING,
    WSABUF,
)

__all__ = [
    "WSAID_CONNECTEX",
    "AssignProcessToJobObject",
    "CloseHandle",
    "ConnectEx",
    "CreateEventW",
    "CreateFileW",
    "CreateIoCompletionPort",
    "CreateJobObjectW",
    "CreateNamedPipeW",
    "GetProcessHandleCount",
    "NtCancelIoFile",
    "NtCancelIoFileEx",
    "NtClose",
    "NtCreateFile",
    "NtCreateIoCompletion",
    "NtDeviceIoControlFile",
    "NtQueryIoCompletion",
    "NtRemoveIoCompletionEx",
    "NtResumeProcess",
    "NtSetIoCompletion",
    "OpenProcess",
    "ReadFile",
    "RtlNtStatusToDosError",
    "SetEvent",
    "SetFileCompletionNotificationModes",
    "SetInformationJobObject",
    "TerminateJobObject",
    "WSAGetOverlappedResult",
    "WSAIoctl",
    "WSARecv",
    "WSASend",
    "WaitForSingleObject",
    "WriteFile",
    "extension_function",
    "getsockopt_int",
    "win32_error",
]

if TYPE_CHECKING:
    Buffer: TypeAlias = (ctypes.Structure | ctypes.Union | ctypes.Array[Any]
                         | ctypes._SimpleCData[Any])
    """A ctypes object whose memory is passed to the kernel."""
else:
    Buffer = object

_c_uint32 = ctypes.c_uint32
_c_int32 = ctypes.c_int32
_c_void_p = ctypes.c_void_p
_P = ctypes.POINTER

# -- Win32 constants these wrappers interpret -------------------------------------------------
INVALID_HANDLE_VALUE = 0xFFFFFFFFFFFFFFFF
ERROR_IO_PENDING = 997
ERROR_MORE_DATA = 234
WAIT_OBJECT_0 = 0x00000000
WAIT_TIMEOUT = 0x00000102
WAIT_FAILED = 0xFFFFFFFF
INFINITE = 0xFFFFFFFF
CURRENT_PROCESS = 0xFFFFFFFFFFFFFFFF  # GetCurrentProcess()'s pseudo-handle, (HANDLE)-1

# -- prototypes -------------------------------------------------------------------------------
_NtCreateIoCompletion = prototype(
    "ntdll", "NtCreateIoCompletion", NTSTATUS,
    [_P(HANDLE), _c_uint32, _P(OBJECT_ATTRIBUTES), _c_uint32],
)
_NtSetIoCompletion = prototype(
    "ntdll", "NtSetIoCompletion", NTSTATUS,
    [HANDLE, _c_void_p, _c_void_p, NTSTATUS, ULONG_PTR],
)
_NtQueryIoCompletion = prototype(
    "ntdll", "NtQueryIoCompletion", NTSTATUS,
    [HANDLE, _c_uint32, _P(_c_int32), _c_uint32, _P(_c_uint32)],
)
_NtRemoveIoCompletionEx = prototype(
    "ntdll", "NtRemoveIoCompletionEx", NTSTATUS,
    [HANDLE, _P(FILE_IO_COMPLETION_INFORMATION), _c_uint32, _P(_c_uint32), _P(LARGE_INTEGER),
     ctypes.c_uint8],
)
_NtDeviceIoControlFile = prototype(
    "ntdll", "NtDeviceIoControlFile", NTSTATUS,
    [HANDLE, HANDLE, _c_void_p, _c_void_p, _c_void_p, _c_uint32, _c_void_p, _c_uint32,
     _c_void_p, _c_uint32],
)
_NtCreateFile = prototype(
    "ntdll", "NtCreateFile", NTSTATUS,
    [_P(HANDLE), _c_uint32, _P(OBJECT_ATTRIBUTES), _P(IO_STATUS_BLOCK), _P(LARGE_INTEGER),
     _c_uint32, _c_uint32, _c_uint32, _c_uint32, _c_void_p, _c_uint32],
)
_NtCancelIoFileEx = prototype(
    "ntdll", "NtCancelIoFileEx", NTSTATUS, [HANDLE, _c_void_p, _P(IO_STATUS_BLOCK)],
)
_NtCancelIoFile = prototype("ntdll", "NtCancelIoFile", NTSTATUS, [HANDLE, _P(IO_STATUS_BLOCK)])
_NtClose = prototype("ntdll", "NtClose", NTSTATUS, [HANDLE])
_NtResumeProcess = prototype("ntdll", "NtResumeProcess", NTSTATUS, [HANDLE])
_RtlNtStatusToDosError = prototype("ntdll", "RtlNtStatusToDosError", _c_uint32, [NTSTATUS])

_CreateIoCompletionPort = prototype(
    "kernel32", "CreateIoCompletionPort", HANDLE, [HANDLE, HANDLE, ULONG_PTR, _c_uint32],
)
_CreateEventW = prototype(
    "kernel32", "CreateEventW", HANDLE, [_c_void_p, _c_int32, _c_int32, ctypes.c_wchar_p],
)
_SetEvent = prototype("kernel32", "SetEvent", _c_int32, [HANDLE])
_WaitForSingleObject = prototype("kernel32", "WaitForSingleObject", _c_uint32, [HANDLE, _c_uint32])
_SetFileCompletionNotificationModes = prototype(
    "kernel32", "SetFileCompletionNotificationModes", _c_int32, [HANDLE, ctypes.c_uint8],
)
_ReadFile = prototype(
    "kernel32", "ReadFile", _c_int32,
    [HANDLE, _c_void_p, _c_uint32, _P(_c_uint32), _P(OVERLAPPED)],
)
_WriteFile = prototype(
    "kernel32", "WriteFile", _c_int32,
    [HANDLE, _c_void_p, _c_uint32, _P(_c_uint32), _P(OVERLAPPED)],
)
_CreateNamedPipeW = prototype(
    "kernel32", "CreateNamedPipeW", HANDLE,
    [ctypes.c_wchar_p, _c_uint32, _c_uint32, _c_uint32, _c_uint32, _c_uint32, _c_uint32,
     _c_void_p],
)
_CreateFileW = prototype(
    "kernel32", "CreateFileW", HANDLE,
    [ctypes.c_wchar_p, _c_uint32, _c_uint32, _c_void_p, _c_uint32, _c_uint32, HANDLE],
)
_CreateJobObjectW = prototype(
    "kernel32", "CreateJobObjectW", HANDLE, [_c_void_p, ctypes.c_wchar_p],
)
_SetInformationJobObject = prototype(
    "kernel32", "SetInformationJobObject", _c_int32, [HANDLE, _c_int32, _c_void_p, _c_uint32],
)
_AssignProcessToJobObject = prototype(
    "kernel32", "AssignProcessToJobObject", _c_int32, [HANDLE, HANDLE],
)
_TerminateJobObject = prototype("kernel32", "TerminateJobObject", _c_int32, [HANDLE, _c_uint32])
_OpenProcess = prototype("kernel32", "OpenProcess", HANDLE, [_c_uint32, _c_int32, _c_uint32])
_CloseHandle = prototype("kernel32", "CloseHandle", _c_int32, [HANDLE])
_GetProcessHandleCount = prototype(
    "kernel32", "GetProcessHandleCount", _c_int32, [HANDLE, _P(_c_uint32)],
)
_WSAIoctl = prototype(
    "ws2_32", "WSAIoctl", _c_int32,
    [ctypes.c_size_t, _c_uint32, _c_void_p, _c_uint32, _c_void_p, _c_uint32, _P(_c_uint32),
     _c_void_p, _c_void_p],
)
_WSAGetLastError = prototype("ws2_32", "WSAGetLastError", _c_int32, [])
_WSAGetOverlappedResult = prototype(
    "ws2_32", "WSAGetOverlappedResult", _c_int32,
    [ctypes.c_size_t, _P(OVERLAPPED), _P(_c_uint32), _c_int32, _P(_c_uint32)],
)
_WSARecv = prototype(
    "ws2_32", "WSARecv", _c_int32,
    [ctypes.c_size_t, _P(WSABUF), _c_uint32, _P(_c_uint32), _P(_c_uint32), _P(OVERLAPPED),
     _c_void_p],
)
_WSASend = prototype(
    "ws2_32", "WSASend", _c_int32,
    [ctypes.c_size_t, _P(WSABUF), _c_uint32, _P(_c_uint32), _c_uint32, _P(OVERLAPPED),
     _c_void_p],
)
_getsockopt = prototype(
    "ws2_32", "getsockopt", _c_int32,
    [ctypes.c_size_t, _c_int32, _c_int32, _c_void_p, _P(_c_int32)],
)


# -- checking ---------------------------------------------------------------------------------
def _check(status: int, function: str) -> int:
    """Raise for any failing status (warnings included); return the unsigned status otherwise."""
    if not _status.is_success(status):
        raise _status.NtStatusError(status, function)
    return _status.to_unsigned(status)


def _handle_value(handle: int | None) -> int:
    return 0 if handle is None else handle


def win32_error(function: str, code: int) -> OSError:
    """An ``OSError`` for a failed Win32 call: ``winerror`` set, the function named."""
    text = f"{function} failed: Win32 error {code}"
    if sys.platform == "win32":
        message = ctypes.FormatError(code).strip()
        if message:
            text += f" ({message})"
        return OSError(None, text, None, code)
    return OSError(text)


def _get_last_error() -> int:
    if sys.platform == "win32":
        return ctypes.get_last_error()
    return 0


def _last_error(function: str) -> OSError:
    return win32_error(function, _get_last_error())


# -- ntdll ------------------------------------------------------------------------------------
IO_COMPLETION_ALL_ACCESS = 0x001F0003


def NtCreateIoCompletion(concurrency: int = 0, access: int = IO_COMPLETION_ALL_ACCESS) -> int:
    """Create an I/O completion object; returns its handle."""
    handle = HANDLE()
    _check(_NtCreateIoCompletion(ctypes.byref(handle), access, None, concurrency),
           "NtCreateIoCompletion")
    return handle.value or 0


def NtSetIoCompletion(
    port: int, key_context: int, apc_context: int, status: int, information: int
) -> None:
    """Queue one completion packet with the given fields on ``port``."""
    signed_status = ctypes.c_int32(_status.to_unsigned(status)).value
    _check(_NtSetIoCompletion(port, key_context, apc_context, signed_status, information),
           "NtSetIoCompletion")


IO_COMPLETION_BASIC_INFORMATION = 0  # IoCompletionBasicInformation: the queue's depth (LONG)


def NtQueryIoCompletion(port: int) -> int:
    """How many packets are queued on ``port`` (its depth): one cheap look that, unlike a
    zero-timeout :func:`NtRemoveIoCompletionEx`, takes nothing (and under Wine 8 is one
    server request where an empty zero-timeout dequeue is two)."""
    depth = _c_int32(0)  # a LONG
    _check(_NtQueryIoCompletion(port, IO_COMPLETION_BASIC_INFORMATION, ctypes.byref(depth),
                                ctypes.sizeof(depth), None), "NtQueryIoCompletion")
    return depth.value


def NtRemoveIoCompletionEx(
    port: int, entries: ctypes.Array[FILE_IO_COMPLETION_INFORMATION], timeout: int | None,
    removed: ctypes.c_uint32 | None = None,
) -> int:
    """Dequeue up to ``len(entries)`` packets into ``entries``; returns how many were removed.

    ``timeout`` is in 100-ns units, negative for relative (NT convention), ``None`` for no
    timeout. ``STATUS_TIMEOUT`` returns 0: the count the kernel wrote is then meaningless.
    ``removed``, if given, is where the kernel writes the count: memory the caller keeps, so
    that a batch is not lost if an exception arrives before this function returns (the caller
    must then also be able to tell a timeout apart: see ``iocp.port``).
    """
    if removed is None:
        removed = _c_uint32(0)
    timeout_ref = ctypes.byref(LARGE_INTEGER(timeout)) if timeout is not None else None
    status = _check(
        _NtRemoveIoCompletionEx(port, entries, len(entries), ctypes.byref(removed),
                                timeout_ref, 0),
        "NtRemoveIoCompletionEx",
    )
    if status == _status.STATUS_TIMEOUT:
        removed.value = 0
        return 0
    return removed.value


def NtDeviceIoControlFile(
    handle: int,
    event: int | None,
    apc_context: int | None,
    io_status_block: Buffer,
    io_control_code: int,
    input_buffer: Buffer | None,
    output_buffer: Buffer | None,
) -> int:
    """Issue a device I/O control request; returns the status (``STATUS_PENDING`` usually).

    Raises only for an error-severity status: then no completion is queued and the request
    is over. For any other status (success, pending, warning) a completion packet will be
    queued if the handle is associated with a port and ``apc_context`` is not NULL, and
    ``io_status_block`` (and the buffers) must stay alive until then.
    """
    in_size = ctypes.sizeof(input_buffer) if input_buffer is not None else 0
    out_size = ctypes.sizeof(output_buffer) if output_buffer is not None else 0
    status = _NtDeviceIoControlFile(
        handle, _handle_value(event), None, apc_context, ctypes.byref(io_status_block),
        io_control_code,
        ctypes.byref(input_buffer) if input_buffer is not None else None, in_size,
        ctypes.byref(output_buffer) if output_buffer is not None else None, out_size,
    )
    if _status.is_error(status):
        raise _status.NtStatusError(status, "NtDeviceIoControlFile")
    return _status.to_unsigned(status)


def NtCreateFile(
    path: str,
    access: int,
    share_access: int,
    create_disposition: int,
    create_options: int = 0,
    file_attributes: int = 0,
    object_attributes: int = 0,
) -> int:
    """Open or create ``path`` (an NT path such as ``\\Device\\Afd\\x``); returns the handle."""
    name = UNICODE_STRING()
    name.Buffer = path
    name.Length = len(path.encode("utf-16-le"))
    name.MaximumLength = name.Length
    attributes = OBJECT_ATTRIBUTES()
    attributes.Length = ctypes.sizeof(OBJECT_ATTRIBUTES)
    attributes.ObjectName = ctypes.pointer(name)
    attributes.Attributes = object_attributes
    io_status = IO_STATUS_BLOCK()
    handle = HANDLE()
    _check(
        _NtCreateFile(ctypes.byref(handle), access, ctypes.byref(attributes),
                      ctypes.byref(io_status), None, file_attributes, share_access,
                      create_disposition, create_options, None, 0),
        "NtCreateFile",
    )
    return handle.value or 0


def NtCancelIoFileEx(handle: int, request: Buffer) -> bool:
    """Cancel the request on ``handle`` whose status block is ``request``.

    Returns ``False`` for ``STATUS_NOT_FOUND`` (the request already completed: its completion
    is, or soon will be, queued). The cancelled request still completes, with
    ``STATUS_CANCELLED`` (or its real result if it won the race).
    """
    io_status = IO_STATUS_BLOCK()
    status = _NtCancelIoFileEx(handle, ctypes.byref(request), ctypes.byref(io_status))
    if _status.to_unsigned(status) == _status.STATUS_NOT_FOUND:
        return False
    _check(status, "NtCancelIoFileEx")
    return True


def NtCancelIoFile(handle: int) -> None:
    """Cancel every request the calling thread issued on ``handle``."""
    io_status = IO_STATUS_BLOCK()
    _check(_NtCancelIoFile(handle, ctypes.byref(io_status)), "NtCancelIoFile")


def NtClose(handle: int) -> None:
    """Close an NT handle."""
    _check(_NtClose(handle), "NtClose")


def NtResumeProcess(process: int) -> None:
    """Resume every thread of ``process`` (a handle with ``PROCESS_SUSPEND_RESUME``)."""
    _check(_NtResumeProcess(process), "NtResumeProcess")


def RtlNtStatusToDosError(status: int) -> int:
    """The Win32 error code for an NTSTATUS (``ERROR_MR_MID_NOT_FOUND``, 317, if none)."""
    result: int = _RtlNtStatusToDosError(ctypes.c_int32(_status.to_unsigned(status)).value)
    return result


# -- kernel32 ---------------------------------------------------------------------------------
def CreateIoCompletionPort(file_handle: int, existing_port: int | None, key: int,
                           concurrency: int = 0) -> int:
    """Create a port, or (``existing_port`` given) associate ``file_handle`` with it."""
    result = _CreateIoCompletionPort(file_handle, _handle_value(existing_port), key, concurrency)
    if not result:
        raise _last_error("CreateIoCompletionPort")
    return int(result)


def CreateEventW(manual_reset: bool, initial_state: bool) -> int:
    """Create an unnamed event; returns its handle."""
    result = _CreateEventW(None, int(manual_reset), int(initial_state), None)
    if not result:
        raise _last_error("CreateEventW")
    return int(result)


def SetEvent(event: int) -> None:
    """Signal an event."""
    if not _SetEvent(event):
        raise _last_error("SetEvent")


def WaitForSingleObject(handle: int, milliseconds: int) -> int:
    """Wait for ``handle``; returns ``WAIT_OBJECT_0`` or ``WAIT_TIMEOUT`` (or another code)."""
    result: int = _WaitForSingleObject(handle, milliseconds)
    if result == WAIT_FAILED:
        raise _last_error("WaitForSingleObject")
    return result


def SetFileCompletionNotificationModes(handle: int, flags: int) -> None:
    """Set ``FILE_SKIP_*`` notification modes on a handle."""
    if not _SetFileCompletionNotificationModes(handle, flags):
        raise _last_error("SetFileCompletionNotificationModes")


def _overlapped_transfer(function: Any, name: str, handle: int, buffer: Buffer, size: int,
                         overlapped: OVERLAPPED) -> int:
    if size > ctypes.sizeof(buffer):
        raise ValueError(f"{name}: size {size} exceeds the buffer's {ctypes.sizeof(buffer)}")
    if function(handle, ctypes.byref(buffer), size, None, ctypes.byref(overlapped)):
        return 0
    code = _get_last_error()
    if code in (ERROR_IO_PENDING, ERROR_MORE_DATA):
        return code
    raise win32_error(name, code)


def ReadFile(handle: int, buffer: Buffer, size: int, overlapped: OVERLAPPED) -> int:
    """Start an overlapped read of up to ``size`` bytes into ``buffer``.

    Returns 0 (completed at once), ``ERROR_IO_PENDING`` or ``ERROR_MORE_DATA`` (a warning: the
    request completed with more data waiting). In all three cases a completion packet is queued
    on an associated port. Any other failure raises ``OSError`` and queues nothing.
    """
    return _overlapped_transfer(_ReadFile, "ReadFile", handle, buffer, size, overlapped)


def WriteFile(handle: int, buffer: Buffer, size: int, overlapped: OVERLAPPED) -> int:
    """Start an overlapped write of ``size`` bytes from ``buffer``; as :func:`ReadFile`."""
    return _overlapped_transfer(_WriteFile, "WriteFile", handle, buffer, size, overlapped)


def CreateNamedPipeW(name: str, open_mode: int, pipe_mode: int, max_instances: int,
                     out_buffer_size: int, in_buffer_size: int, default_timeout: int = 0) -> int:
    """Create an instance of a named pipe; returns the server end's handle."""
    result = _CreateNamedPipeW(name, open_mode, pipe_mode, max_instances, out_buffer_size,
                               in_buffer_size, default_timeout, None)
    if not result or result == INVALID_HANDLE_VALUE:
        raise _last_error("CreateNamedPipeW")
    return int(result)


def CreateFileW(name: str, access: int, share_mode: int, creation_disposition: int,
                flags_and_attributes: int) -> int:
    """Open a file or device by its Win32 name; returns the handle."""
    result = _CreateFileW(name, access, share_mode, None, creation_disposition,
                          flags_and_attributes, None)
    if not result or result == INVALID_HANDLE_VALUE:
        raise _last_error("CreateFileW")
    return int(result)


JobObjectExtendedLimitInformation = 9
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000
PROCESS_TERMINATE = 0x0001
PROCESS_SET_QUOTA = 0x0100
PROCESS_SUSPEND_RESUME = 0x0800


def CreateJobObjectW() -> int:
    """Create an unnamed job object; returns its handle."""
    result = _CreateJobObjectW(None, None)
    if not result:
        raise _last_error("CreateJobObjectW")
    return int(result)


def SetInformationJobObject(job: int, information_class: int, information: Buffer) -> None:
    """Set one class of limits on ``job`` (e.g. ``JobObjectExtendedLimitInformation`` with a
    :class:`~ntdll.structures.JOBOBJECT_EXTENDED_LIMIT_INFORMATION`)."""
    if not _SetInformationJobObject(job, information_class, ctypes.byref(information),
                                    ctypes.sizeof(information)):
        raise _last_error("SetInformationJobObject")


def AssignProcessToJobObject(job: int, process: int) -> None:
    """Put ``process`` (with ``PROCESS_SET_QUOTA | PROCESS_TERMINATE``) in ``job``; the
    processes it creates from then on are in the job too."""
    if not _AssignProcessToJobObject(job, process):
        raise _last_error("AssignProcessToJobObject")


def TerminateJobObject(job: int, exit_code: int) -> None:
    """Terminate every process in ``job`` with ``exit_code``."""
    if not _TerminateJobObject(job, exit_code):
        raise _last_error("TerminateJobObject")


def OpenProcess(access: int, pid: int, inherit: bool = False) -> int:
    """Open the process ``pid`` with ``access``; returns the handle."""
    result = _OpenProcess(access, int(inherit), pid)
    if not result:
        raise _last_error("OpenProcess")
    return int(result)


def CloseHandle(handle: int) -> None:
    """Close a Win32 handle."""
    if not _CloseHandle(handle):
        raise _last_error("CloseHandle")


def GetProcessHandleCount() -> int:
    """The number of handles the current process has open."""
    count = _c_uint32(0)
    if not _GetProcessHandleCount(CURRENT_PROCESS, ctypes.byref(count)):
        raise _last_error("GetProcessHandleCount")
    return count.value


# -- ws2_32 -----------------------------------------------------------------------------------
def WSAIoctl(socket: int, control_code: int, in_buffer: Buffer | None,
             out_buffer: Buffer | None) -> int:
    """Synchronous ``WSAIoctl``; returns the number of bytes written to ``out_buffer``."""
    returned = _c_uint32(0)
    result = _WSAIoctl(
        socket, control_code,
        ctypes.byref(in_buffer) if in_buffer is not None else None,
        ctypes.sizeof(in_buffer) if in_buffer is not None else 0,
        ctypes.byref(out_buffer) if out_buffer is not None else None,
        ctypes.sizeof(out_buffer) if out_buffer is not None else 0,
        ctypes.byref(returned), None, None,
    )
    if result != 0:
        raise win32_error("WSAIoctl", _WSAGetLastError())
    return returned.value


WSA_IO_PENDING = 997


def _wsabuf(buffer: Buffer, size: int, function: str) -> WSABUF:
    if size > ctypes.sizeof(buffer):
        raise ValueError(f"{function}: size {size} exceeds the buffer's {ctypes.sizeof(buffer)}")
    return WSABUF(size, ctypes.addressof(buffer))


def WSARecv(socket: int, buffer: Buffer, size: int, overlapped: OVERLAPPED) -> int:
    """Start an overlapped receive of up to ``size`` bytes into ``buffer``.

    Returns 0 (completed at once) or ``WSA_IO_PENDING``; either way a completion is queued on
    the port the socket is associated with, and ``buffer`` and ``overlapped`` must live until
    it is dequeued. Any other failure raises ``OSError`` (``winerror`` = the WSA error) and
    queues nothing.
    """
    wsabuf = _wsabuf(buffer, size, "WSARecv")
    flags = _c_uint32(0)
    if _WSARecv(socket, ctypes.byref(wsabuf), 1, None, ctypes.byref(flags),
                ctypes.byref(overlapped), None) == 0:
        return 0
    code: int = _WSAGetLastError()
    if code == WSA_IO_PENDING:
        return code
    raise win32_error("WSARecv", code)


def WSASend(socket: int, buffer: Buffer, size: int, overlapped: OVERLAPPED) -> int:
    """Start an overlapped send of ``size`` bytes from ``buffer``; as :func:`WSARecv`."""
    wsabuf = _wsabuf(buffer, size, "WSASend")
    if _WSASend(socket, ctypes.byref(wsabuf), 1, None, 0, ctypes.byref(overlapped), None) == 0:
        return 0
    code: int = _WSAGetLastError()
    if code == WSA_IO_PENDING:
        return code
    raise win32_error("WSASend", code)


SIO_GET_EXTENSION_FUNCTION_POINTER = 0xC800_0006
WSAID_CONNECTEX = bytes.fromhex("b907a225f3dd60468ee976e58c74063e")
"""``{25a207b9-ddf3-4660-8ee9-76e58c74063e}`` as a ``GUID`` lays it out (first three fields
little-endian)."""

_FUNCTYPE = getattr(ctypes, "WINFUNCTYPE", ctypes.CFUNCTYPE)  # one convention on x64
# ctypes keeps the thread's last error as the call left it (the next Python-level call could
# change it before WSAGetLastError runs: seen under Wine, where it read 0 after a pending
# ConnectEx).
_ConnectExFunction = _FUNCTYPE(_c_int32, ctypes.c_size_t, _c_void_p, _c_int32, _c_void_p,
                               _c_uint32, _c_void_p, _P(OVERLAPPED), use_last_error=True)


def extension_function(socket: int, guid: bytes) -> int:
    """The address of the Winsock extension function ``guid`` names, for the provider of
    ``socket`` (``SIO_GET_EXTENSION_FUNCTION_POINTER``)."""
    if len(guid) != 16:
        raise ValueError(f"a GUID is 16 bytes, not {len(guid)}")
    pointer = _c_void_p(0)
    WSAIoctl(socket, SIO_GET_EXTENSION_FUNCTION_POINTER,
             (ctypes.c_char * 16).from_buffer_copy(guid), pointer)
    if not pointer.value:
        raise OSError(f"WSAIoctl returned no address for extension function {guid.hex()}")
    return pointer.value


def ConnectEx(function: int, socket: int, name: Buffer, overlapped: OVERLAPPED) -> int:
    """Start an overlapped connect of the bound ``socket`` to the ``sockaddr`` in ``name``
    (all of its bytes), through ``function`` (:func:`extension_function` of
    :data:`WSAID_CONNECTEX`). Returns 0 (connected at once) or ``WSA_IO_PENDING``; as with
    :func:`WSARecv` a completion is queued either way unless skip-on-success is set, and
    ``name`` and ``overlapped`` must live until it is dequeued. Any other failure raises
    ``OSError`` (``winerror`` = the WSA error) and queues nothing."""
    if not function:
        raise ValueError("ConnectEx: NULL function address")
    call = _ConnectExFunction(function)
    if call(socket, ctypes.addressof(name), ctypes.sizeof(name), None, 0, None,
            ctypes.byref(overlapped)):
        return 0
    code = _get_last_error()
    if code == WSA_IO_PENDING:
        return code
    raise win32_error("ConnectEx", code)


def WSAGetOverlappedResult(socket: int, overlapped: OVERLAPPED, function: str) -> int:
    """The byte count of a *completed* overlapped request on ``socket``; if it failed, raises
    ``OSError`` whose ``winerror`` is the WSA error Winsock maps its status to (what the
    stdlib's Proactor loop raises: ``ConnectionRefusedError`` for a refused connect...),
    naming ``function``. Never waits."""
    transferred = _c_uint32(0)
    flags = _c_uint32(0)
    if _WSAGetOverlappedResult(socket, ctypes.byref(overlapped), ctypes.byref(transferred), 0,
                               ctypes.byref(flags)):
        return transferred.value
    raise win32_error(function, _WSAGetLastError())


def getsockopt_int(socket: int, level: int, option: int) -> int:
    """An integer socket option of a raw socket handle (``WSAENOTSOCK`` for a non-socket)."""
    value = _c_int32(0)
    size = _c_int32(ctypes.sizeof(value))
    if _getsockopt(socket, level, option, ctypes.byref(value), ctypes.byref(size)) != 0:
        raise win32_error("getsockopt", _WSAGetLastError())
    return value.value


if sys.platform == "win32":
    # Let NtStatusError name the Win32 mapping of every status, known or not.
    _status._dos_error_of = RtlNtStatusToDosError
    _status._win32_message_of = ctypes.FormatError
