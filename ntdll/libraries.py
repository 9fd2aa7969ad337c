"""Loading ntdll, kernel32 and ws2_32 and declaring typed prototypes.

On Windows each prototype is the DLL's function with ``argtypes``/``restype`` set. Elsewhere the
module still imports (structures and constants stay usable and testable) and every prototype is a
stand-in that raises :class:`NotOnWindowsError` naming the function and the platform.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["NotOnWindowsError", "Prototype", "prototype", "running_under_wine"]


class NotOnWindowsError(NotImplementedError):
    """An NT or Win32 function was called on a platform that has none."""


class Prototype(Protocol):
    """A callable foreign function (or its off-Windows stand-in)."""

    __name__: str

    def __call__(self, *args: Any) -> Any: ...


class _Unavailable:
    def __init__(self, library: str, name: str) -> None:
        self.__name__ = name
        self._library = library

    def __call__(self, *args: Any) -> Any:
        raise NotOnWindowsError(
            f"{self._library}!{self.__name__} is a Windows function and this platform is "
            f"{sys.platform!r}: the NT/AFD/IOCP calls need Windows (or Wine)"
        )


_loaded: dict[str, Any] = {}


def _library(name: str) -> Any:
    if name not in _loaded:
        if sys.platform == "win32":
            # use_last_error: ctypes saves GetLastError() right after each call, so no
            # other Python code can overwrite it before we read it.
            _loaded[name] = ctypes.WinDLL(name, use_last_error=True)
        else:  # pragma: no cover - guarded by the caller
            raise NotOnWindowsError(
                f"{name} is a Windows library; this platform is {sys.platform!r}")
    return _loaded[name]


def prototype(library: str, name: str, restype: Any, argtypes: Sequence[Any]) -> Prototype:
    """The function ``library!name`` with its C signature, or a stand-in off Windows."""
    if sys.platform != "win32":
        return _Unavailable(library, name)
    function = getattr(_library(library), name)
    function.restype = restype
    function.argtypes = list(argtypes)
    function.__name__ = name
    result: Prototype = function
    return result


def running_under_wine() -> bool:
    """Whether this is Wine's ntdll (it exports ``wine_get_version``); ``False`` off Windows.

    For tuning to Wine's costs only (ACTIVE_KB E15): behaviour must stay right for Windows."""
    if sys.platform != "win32":
        return False
    return hasattr(_library("ntdll"), "wine_get_version")
