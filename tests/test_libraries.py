"""Importing works everywhere; calling off Windows names the function and the platform."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from types import ModuleType

import pytest

import afd
import execsession
import iocp
import ntdll
from ntdll import NotOnWindowsError
from ntdll import functions as nt

PACKAGES = [ntdll, iocp, afd, execsession]
PLATFORM_MODULES = {"execsession.iocp_backend": ("win32", "needs Windows"),
                    "execsession.iocp_child": ("win32", "needs Windows"),
                    "execsession.iocp_streams": ("win32", "needs Windows"),
                    "execsession.posix_backend": ("posix", "needs POSIX"),
                    "execsession.posix_guardian": ("posix", "needs POSIX"),
                    "execsession.posix_relay": ("posix", "needs POSIX"),
                    "execsession.posix_spawn": ("posix", "needs POSIX")}
"""Backends that refuse to import on the other platform, on purpose, with an ImportError
saying what they need."""


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_every_module_imports_on_every_platform(package: ModuleType) -> None:
    names = [info.name for info in pkgutil.walk_packages(package.__path__,
                                                         package.__name__ + ".")]
    assert names, f"{package.__name__} has no modules?"
    here = "win32" if sys.platform == "win32" else "posix"
    for name in names:
        platform, need = PLATFORM_MODULES.get(name, (here, ""))
        if platform != here:
            with pytest.raises(ImportError, match=need):
                importlib.import_module(name)
        else:
            importlib.import_module(name)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_every_exported_name_exists(package: ModuleType) -> None:
    """``__all__`` is what ``from package import *`` and the documentation promise."""
    exported = list(package.__all__)
    assert exported and len(set(exported)) == len(exported)
    missing = [name for name in exported if not hasattr(package, name)]
    assert missing == []


@pytest.mark.posix
def test_calling_off_windows_names_the_platform() -> None:
    with pytest.raises(NotOnWindowsError, match=rf"ntdll!NtCreateIoCompletion .*'{sys.platform}'"):
        nt.NtCreateIoCompletion()
    with pytest.raises(NotOnWindowsError, match=sys.platform):
        iocp.CompletionPort()
    with pytest.raises(NotOnWindowsError, match="ws2_32!"):
        afd.base_socket_handle(3)


@pytest.mark.windows
def test_functions_are_typed_prototypes_on_windows() -> None:
    prototype = nt._NtRemoveIoCompletionEx
    assert len(prototype.argtypes) == 6  # type: ignore[attr-defined]
    assert nt.RtlNtStatusToDosError(0xC0000008) == 6
