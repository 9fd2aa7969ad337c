"""Overlapped socket I/O: ``WSARecv`` / ``WSASend`` on a socket associated with a port.

See :mod:`iocp.overlapped_io` for the rules (inline completions, skip-on-success, memory).
Skip-on-success is set only where :func:`skip_is_safe` says so: the socket is its own base
handle, i.e. no layered service provider stands between us and Microsoft's AFD provider.

Why ``WSARecv``/``WSASend`` and not AFD's own ``IOCTL_AFD_RECEIVE``/``IOCTL_AFD_SEND`` through
``NtDeviceIoControlFile``: under Wine 8 the receive works (inline and pending alike) and costs
exactly the same wineserver requests as ``WSARecv`` (ACTIVE_KB E13), while the send is not
implemented (``STATUS_INVALID_DEVICE_REQUEST``); and the Winsock calls are the documented ones.
"""

from __future__ import annotations

import ctypes
from typing import Protocol

from ntdll import functions as nt

from .overlapped_io import OverlappedIO
from .port import CompletionPort

__all__ = ["SIO_BASE_HANDLE", "SocketIO", "skip_is_safe"]

SIO_BASE_HANDLE = 0x48000022


class _SocketLike(Protocol):
    def fileno(self) -> int: ...


def skip_is_safe(handle: int) -> bool:
    """Whether skip-on-success may be set on the socket ``handle``: its base handle
    (``SIO_BASE_HANDLE``) is itself, so Microsoft's provider answers its calls. ``False``
    when the lookup fails (an LSP that hides the base handle: be safe)."""
    base = ctypes.c_uint64(0)
    try:
        nt.WSAIoctl(handle, SIO_BASE_HANDLE, None, base)
    except OSError:
        return False
    return base.value == handle


class SocketIO(OverlappedIO):
    """``WSARecv``/``WSASend`` on a connected socket; see :class:`OverlappedIO`.

    ``skip_on_success``: ``None`` (default) sets it when :func:`skip_is_safe`; ``False`` never;
    ``True`` forces it (the caller checked). The socket is associated with ``port`` for the
    rest of its life (a handle is associated once); the socket object stays the caller's.
    A receive that completes with 0 bytes is the peer's end of data.
    """

    _kind = "socket"
    _read_call = staticmethod(nt.WSARecv)
    _write_call = staticmethod(nt.WSASend)

    def __init__(self, port: CompletionPort, sock: _SocketLike | int, key: int, *,
                 skip_on_success: bool | None = None) -> None:
        handle = sock if isinstance(sock, int) else sock.fileno()
        if handle < 0:
            raise ValueError("SocketIO on a closed socket")
        if skip_on_success is None:
            skip_on_success = skip_is_safe(handle)
        super().__init__(port, handle, key, skip_on_success=skip_on_success)
