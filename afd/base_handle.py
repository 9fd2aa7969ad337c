"""Finding a socket's base handle: the AFD handle that polls must name.

A Layered Service Provider (LSP) may wrap a socket so that the handle Python holds is not the
AFD driver's. ``SIO_BASE_HANDLE`` returns the real one; an LSP may intercept that too, so, as
wepoll, mio and trio do, fall back to ``SIO_BSP_HANDLE_POLL`` then ``SIO_BSP_HANDLE_SELECT``
(which ask the base service provider directly). Wine 8.0 supports only ``SIO_BASE_HANDLE``.
"""

from __future__ import annotations

import ctypes
import sys
from typing import NoReturn, Protocol

from ntdll import functions as nt

__all__ = [
    "SIO_BASE_HANDLE",
    "SIO_BSP_HANDLE_POLL",
    "SIO_BSP_HANDLE_SELECT",
    "NotASocketError",
    "SocketLike",
    "base_socket_handle",
    "socket_handle",
]

SIO_BASE_HANDLE = 0x48000022
SIO_BSP_HANDLE_SELECT = 0x4800001C
SIO_BSP_HANDLE_POLL = 0x4800001D
WSAENOTSOCK = 10038
SOL_SOCKET = 0xFFFF
SO_TYPE = 0x1008

_LOOKUPS = (
    ("SIO_BASE_HANDLE", SIO_BASE_HANDLE),
    ("SIO_BSP_HANDLE_POLL", SIO_BSP_HANDLE_POLL),
    ("SIO_BSP_HANDLE_SELECT", SIO_BSP_HANDLE_SELECT),
)


class SocketLike(Protocol):
    def fileno(self) -> int: ...


class NotASocketError(OSError):
    """The handle given is not a socket (``WSAENOTSOCK``), or its base handle can't be found."""


def socket_handle(sock: SocketLike | int) -> int:
    """The socket's own handle (``fileno()``); ``ValueError`` if it is closed."""
    value = sock if isinstance(sock, int) else sock.fileno()
    if not isinstance(value, int):
        raise TypeError(f"fileno() must return an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"invalid socket: fileno {value} (the socket is closed)")
    return value


def check_socket(handle: int) -> None:
    """Raise :class:`NotASocketError` unless ``handle`` is a socket (``getsockopt(SO_TYPE)``
    succeeds)."""
    try:
        nt.getsockopt_int(handle, SOL_SOCKET, SO_TYPE)
    except OSError as error:
        winerror = getattr(error, "winerror", None) or 0
        _raise(handle, "is not a socket" if winerror == WSAENOTSOCK else "is not a usable socket",
               [f"getsockopt(SO_TYPE): Win32 error {winerror}"], winerror)


def base_socket_handle(sock: SocketLike | int, *, verify: bool = True) -> int:
    """The base (AFD) handle of ``sock`` (a socket object or its handle).

    Raises ``ValueError`` for a closed socket object and :class:`NotASocketError` if no lookup
    works (for a non-socket, ``winerror`` is ``WSAENOTSOCK``, 10038). ``verify=False`` skips
    the :func:`check_socket` that only Wine needs (see below), for a caller that is about to
    find out anyway: an AFD poll naming a non-socket fails.
    """
    handle = socket_handle(sock)
    # Wine 8.0 answers SIO_BASE_HANDLE for any handle, socket or not, with the handle itself;
    # a socket call that needs a real socket (Windows fails SIO_BASE_HANDLE alike) tells first.
    if verify:
        check_socket(handle)
    failures: list[str] = []
    first_error = 0
    for name, code in _LOOKUPS:
        base = ctypes.c_void_p()
        try:
            nt.WSAIoctl(handle, code, None, base)
        except OSError as error:
            winerror = getattr(error, "winerror", None) or 0
            failures.append(f"{name}: Win32 error {winerror}")
            first_error = first_error or winerror
            if winerror == WSAENOTSOCK:
                break
            continue
        if base.value:
            return base.value
        failures.append(f"{name}: returned NULL")
    what = "is not a socket" if first_error == WSAENOTSOCK else "has no base socket handle"
    _raise(handle, what, failures, first_error)


def _raise(handle: int, what: str, failures: list[str], winerror: int) -> NoReturn:
    text = f"handle 0x{handle:x} {what} ({'; '.join(failures)})"
    if sys.platform == "win32" and winerror:
        raise NotASocketError(None, text, None, winerror)
    raise NotASocketError(text)
