"""Overlapped socket I/O: ``WSARecv`` / ``WSASend`` on a socket associated with a port.

See :mod:`iocp.overlapped_io` for the rules (inline completions, skip-on-success, memory).
Skip-on-success is set only where :func:`skip_is_safe` says so: the socket is its own base
handle, i.e. no layered service provider stands between us and Microsoft's AFD provider.

``connect`` is ``ConnectEx`` (the extension function Winsock hands out by GUID): the connect
completes on the port like a transfer, with no readiness poll in between (``connect()`` that
would block, then an AFD poll for "writable", then ``SO_ERROR``). Its rules: the socket must be
bound first, and once connected the caller sets ``SO_UPDATE_CONNECT_CONTEXT``
(:data:`SO_UPDATE_CONNECT_CONTEXT`) so that ``getpeername``, ``shutdown`` and the rest work.
``AfdEventLoop`` does not use it: under Wine 8 it made 14 more wineserver requests per
connection than ``connect()`` + an AFD poll, for no time gained (ACTIVE_KB CE2); on Windows it
saves a poll per connect, which is to be measured there.

Why ``WSARecv``/``WSASend`` and not AFD's own ``IOCTL_AFD_RECEIVE``/``IOCTL_AFD_SEND`` through
``NtDeviceIoControlFile``: under Wine 8 the receive works (inline and pending alike) and costs
exactly the same wineserver requests as ``WSARecv`` (ACTIVE_KB E13), while the send is not
implemented (``STATUS_INVALID_DEVICE_REQUEST``); and the Winsock calls are the documented ones.
"""

from __future__ import annotations

import ctypes
import socket as _socket
import struct
from typing import Any, Protocol

from ntdll import functions as nt
from ntdll.structures import OVERLAPPED

from .operation import Operation, OperationBusyError
from .overlapped_io import OverlappedIO
from .port import PACKET, CompletionPort, IssueResult

__all__ = ["SIO_BASE_HANDLE", "SO_UPDATE_CONNECT_CONTEXT", "SocketIO", "skip_is_safe",
           "sockaddr"]

SIO_BASE_HANDLE = 0x48000022
SO_UPDATE_CONNECT_CONTEXT = 0x7010
"""``setsockopt(SOL_SOCKET, SO_UPDATE_CONNECT_CONTEXT, NULL, 0)`` after ``ConnectEx``."""

_connect_ex: dict[int, int] = {}
"""``ConnectEx``'s address per address family (the provider's; looked up once)."""


def sockaddr(family: int, address: Any) -> ctypes.Array[ctypes.c_char]:
    """The ``SOCKADDR_IN`` (16 bytes) or ``SOCKADDR_IN6`` (28 bytes) of a numeric ``address``
    — ``(host, port)``, or ``(host, port, flowinfo, scope_id)`` for IPv6 — as a buffer the
    kernel may read until the request completes. Raises ``ValueError`` for another family or
    a host that is not a numeric address (resolve it first)."""
    try:
        if family == _socket.AF_INET:
            host, port = address[:2]
            packed = (struct.pack("<H", family) + struct.pack(">H", port)
                      + _socket.inet_pton(family, host) + bytes(8))
        elif family == _socket.AF_INET6:
            host, port = address[:2]
            flowinfo = address[2] if len(address) > 2 else 0
            scope_id = address[3] if len(address) > 3 else 0
            packed = (struct.pack("<H", family) + struct.pack(">HI", port, flowinfo)
                      + _socket.inet_pton(family, host) + struct.pack("<I", scope_id))
        else:
            raise ValueError(f"ConnectEx: address family {family} is not AF_INET or AF_INET6")
    except (OSError, struct.error, TypeError) as exc:
        raise ValueError(f"ConnectEx: {address!r} is not a numeric address of family "
                         f"{family}: {exc}") from None
    return ctypes.create_string_buffer(packed, len(packed))


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

    def connect(self, family: int, address: Any, tag: Any = None) -> Operation:
        """Start connecting the (bound) socket to ``address`` of ``family`` (``ConnectEx``);
        returns the operation, ``COMPLETED`` (connected at once, skip-on-success: no packet)
        or ``PENDING`` (its completion comes through the port; its ``status`` says whether
        the connect succeeded). Raises ``ValueError`` for an address :func:`sockaddr` refuses
        and ``OSError`` if the call failed at once (an unbound socket: ``WSAEINVAL``)."""
        name = sockaddr(family, address)
        handle = self.handle
        function = _connect_ex.get(family)
        if function is None:
            function = _connect_ex[family] = nt.extension_function(handle, nt.WSAID_CONNECTEX)
        skip = self._skip

        def issue(overlapped: OVERLAPPED) -> IssueResult:
            try:
                result = nt.ConnectEx(function, handle, name, overlapped)
            except OSError as exc:
                return exc
            return 0 if result == 0 and skip else PACKET

        operation = Operation(tag, name)
        self.port.start(operation, handle, issue)
        if operation.pending:
            self._pending.add(operation)
        return operation

    def connect_result(self, operation: Operation) -> None:
        """Check a completed :meth:`connect`: returns if it connected, else raises the
        ``OSError`` Winsock gives for its status (``ConnectionRefusedError``,
        ``TimeoutError``...; ``NtStatusError`` once the socket is gone)."""
        if operation.pending or operation.status is None:
            raise OperationBusyError(f"{operation!r} has not completed")
        if operation.succeeded:
            return
        if self._handle is not None:
            nt.WSAGetOverlappedResult(self._handle, operation._overlapped, "ConnectEx")
        operation.result()  # raises NtStatusError
