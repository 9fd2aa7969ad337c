"""Importing works everywhere; calling off Windows names the function and the platform."""

from __future__ import annotations

import sys

import pytest

import afd
import iocp
import ntdll
from ntdll import NotOnWindowsError
from ntdll import functions as nt


def test_packages_import_on_every_platform() -> None:
    assert ntdll.NtStatusError is ntdll.status.NtStatusError
    assert iocp.CompletionPort.__name__ == "CompletionPort"
    assert int(afd.AfdPollEvents.ACCEPT) == 0x80


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
