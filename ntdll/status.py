"""NTSTATUS codes the project meets, their names, and :class:`NtStatusError`.

An NTSTATUS is a 32-bit value whose top two bits give its severity: ``00`` success,
``01`` informational, ``10`` warning, ``11`` error. ``NT_SUCCESS`` is "the signed value is >= 0",
so ``STATUS_PENDING`` and ``STATUS_TIMEOUT`` are successes, not errors.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = [
    "STATUS_ACCESS_DENIED",
    "STATUS_BUFFER_OVERFLOW",
    "STATUS_BUFFER_TOO_SMALL",
    "STATUS_CANCELLED",
    "STATUS_CONNECTION_REFUSED",
    "STATUS_CONNECTION_RESET",
    "STATUS_END_OF_FILE",
    "STATUS_HANDLE_NOT_CLOSABLE",
    "STATUS_INSUFFICIENT_RESOURCES",
    "STATUS_INVALID_DEVICE_REQUEST",
    "STATUS_INVALID_HANDLE",
    "STATUS_INVALID_PARAMETER",
    "STATUS_LOCAL_DISCONNECT",
    "STATUS_NOT_FOUND",
    "STATUS_NOT_IMPLEMENTED",
    "STATUS_NOT_SUPPORTED",
    "STATUS_NO_MEMORY",
    "STATUS_OBJECT_NAME_INVALID",
    "STATUS_OBJECT_NAME_NOT_FOUND",
    "STATUS_OBJECT_TYPE_MISMATCH",
    "STATUS_PENDING",
    "STATUS_PIPE_BROKEN",
    "STATUS_PIPE_CLOSING",
    "STATUS_PIPE_DISCONNECTED",
    "STATUS_PIPE_EMPTY",
    "STATUS_PIPE_LISTENING",
    "STATUS_REMOTE_DISCONNECT",
    "STATUS_SUCCESS",
    "STATUS_TIMEOUT",
    "STATUS_UNSUCCESSFUL",
    "STATUS_USER_APC",
    "NtStatusError",
    "is_error",
    "is_success",
    "status_name",
    "to_unsigned",
]

STATUS_SUCCESS = 0x00000000
STATUS_USER_APC = 0x000000C0
STATUS_TIMEOUT = 0x00000102
STATUS_PENDING = 0x00000103
STATUS_BUFFER_OVERFLOW = 0x80000005
STATUS_UNSUCCESSFUL = 0xC0000001
STATUS_NOT_IMPLEMENTED = 0xC0000002
STATUS_INVALID_HANDLE = 0xC0000008
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_INVALID_DEVICE_REQUEST = 0xC0000010
STATUS_END_OF_FILE = 0xC0000011
STATUS_NO_MEMORY = 0xC0000017
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_BUFFER_TOO_SMALL = 0xC0000023
STATUS_OBJECT_TYPE_MISMATCH = 0xC0000024
STATUS_OBJECT_NAME_INVALID = 0xC0000033
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_INSUFFICIENT_RESOURCES = 0xC000009A
STATUS_PIPE_DISCONNECTED = 0xC00000B0
STATUS_PIPE_CLOSING = 0xC00000B1
STATUS_PIPE_LISTENING = 0xC00000B3
STATUS_NOT_SUPPORTED = 0xC00000BB
STATUS_PIPE_EMPTY = 0xC00000D9
STATUS_CANCELLED = 0xC0000120
STATUS_LOCAL_DISCONNECT = 0xC000013B
STATUS_REMOTE_DISCONNECT = 0xC000013C
STATUS_PIPE_BROKEN = 0xC000014B
STATUS_CONNECTION_RESET = 0xC000020D
STATUS_NOT_FOUND = 0xC0000225
STATUS_HANDLE_NOT_CLOSABLE = 0xC0000235
STATUS_CONNECTION_REFUSED = 0xC0000236

_NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("STATUS_") and isinstance(value, int)
}


def to_unsigned(status: int) -> int:
    """The status as an unsigned 32-bit value (``-1073741816`` -> ``0xC0000008``)."""
    return status & 0xFFFFFFFF


def status_name(status: int) -> str | None:
    """``"STATUS_..."`` for a known status (signed or unsigned form), else ``None``."""
    return _NAMES.get(to_unsigned(status))


def is_success(status: int) -> bool:
    """``NT_SUCCESS``: success or informational severity (``STATUS_PENDING`` included)."""
    return to_unsigned(status) < 0x80000000


def is_error(status: int) -> bool:
    """``NT_ERROR``: error severity (top two bits set)."""
    return to_unsigned(status) >= 0xC0000000


def _format_status(status: int) -> str:
    name = status_name(status)
    code = f"0x{to_unsigned(status):08X}"
    return f"{name} ({code})" if name else f"unknown NTSTATUS {code}"


# Set by ntdll.functions on Windows: RtlNtStatusToDosError and a Win32 message formatter.
_dos_error_of: Callable[[int], int] | None = None
_win32_message_of: Callable[[int], str] | None = None


class NtStatusError(OSError):
    """An NT call returned a failing NTSTATUS.

    Carries ``ntstatus`` (unsigned 32-bit), ``status_name`` (``"STATUS_..."`` or ``None`` when
    unknown), ``win32_error`` (``RtlNtStatusToDosError``'s mapping; ``None`` off Windows) and
    ``function`` (the call that failed). On Windows ``winerror`` and ``errno`` follow the Win32
    mapping, as for any ``OSError``.
    """

    ntstatus: int
    status_name: str | None
    win32_error: int | None
    function: str | None

    def __init__(self, status: int, function: str | None = None) -> None:
        status = to_unsigned(status)
        win32_error = _dos_error_of(status) if _dos_error_of is not None else None
        parts = [f"{function} failed: " if function else "", _format_status(status)]
        # Win32 codes are C longs; a status RtlNtStatusToDosError passes through may not fit.
        fits = win32_error is not None and win32_error < 2**31
        if win32_error is not None:
            parts.append(f", Win32 error {win32_error}")
            if _win32_message_of is not None and fits:
                message = _win32_message_of(win32_error).strip()
                if message:
                    parts.append(f" ({message})")
        text = "".join(parts)
        if sys.platform == "win32" and fits:
            super().__init__(None, text, None, win32_error)
        else:
            super().__init__(text)
        self.ntstatus = status
        self.status_name = status_name(status)
        self.win32_error = win32_error
        self.function = function

    def __str__(self) -> str:
        return str(self.args[1] if len(self.args) > 1 else self.args[0])

    def __reduce__(self) -> tuple[type[NtStatusError], tuple[int, str | None]]:
        return (type(self), (self.ntstatus, self.function))
