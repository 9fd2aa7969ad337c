"""ntdll: hand-written ctypes bindings to the NT native API (and a few Win32 calls).

The lowest layer of ntafd: NT structures with Windows x64 layouts, NTSTATUS codes and
:class:`NtStatusError`, and typed wrappers that call and check. It imports on every platform;
calling a function off Windows raises :class:`NotOnWindowsError`. ``ntdll.speedups`` loads the
optional C implementation of the hot paths (``_ntafd_speedups``) that ``iocp`` and ``afd`` use
when it is present.
"""

from . import functions, status, structures
from .libraries import NotOnWindowsError
from .status import NtStatusError, status_name

__version__ = "0.1.0"
"""The version of the ntafd distribution: written here only (pyproject.toml reads it)."""

__all__ = [
    "NotOnWindowsError",
    "NtStatusError",
    "__version__",
    "functions",
    "status",
    "status_name",
    "structures",
]
