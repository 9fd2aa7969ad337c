"""Importing trio for the benchmarks, patched when it runs under Wine.

trio 0.35's Windows I/O manager checks at start-up that ``SIO_BSP_HANDLE_SELECT`` and
``SIO_BASE_HANDLE`` return the same socket (to detect Layered Service Providers). Wine 8.0
rejects ``SIO_BSP_HANDLE_SELECT`` with ``WSAEOPNOTSUPP``, so trio cannot start there. Under
Wine only, the lookup it asks for is answered with ``SIO_BASE_HANDLE`` (what Wine's sockets
are: no LSP exists there), and a line says so. On Windows trio runs unpatched.
"""

from __future__ import annotations

from typing import Any

from .common import under_wine

_patched = False


def import_trio(optional: bool = False) -> Any:
    """trio (with ``trio.testing``), patched under Wine; ``None`` if ``optional`` and absent."""
    global _patched
    try:
        import trio
        import trio.testing
    except ImportError:
        if optional:
            return None
        raise
    if under_wine() and not _patched:
        from trio._core import _io_windows

        original = _io_windows._get_underlying_socket

        def base_handle_instead(sock: Any, *, which: Any = _io_windows.WSAIoctls.SIO_BASE_HANDLE
                                ) -> Any:
            if which == _io_windows.WSAIoctls.SIO_BSP_HANDLE_SELECT:
                which = _io_windows.WSAIoctls.SIO_BASE_HANDLE
            return original(sock, which=which)

        _io_windows._get_underlying_socket = base_handle_instead
        _patched = True
        print("# trio: running under Wine, so trio's SIO_BSP_HANDLE_SELECT lookup is patched "
              "to SIO_BASE_HANDLE (Wine 8.0 rejects SIO_BSP_HANDLE_SELECT)", flush=True)
    return trio
