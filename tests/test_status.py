"""NTSTATUS names, severities and NtStatusError."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ntdll import NtStatusError, status

NAMES = {
    0x00000000: "STATUS_SUCCESS", 0x00000102: "STATUS_TIMEOUT", 0x00000103: "STATUS_PENDING",
    0xC0000120: "STATUS_CANCELLED", 0xC0000225: "STATUS_NOT_FOUND",
    0xC0000008: "STATUS_INVALID_HANDLE", 0xC000000D: "STATUS_INVALID_PARAMETER",
}


@pytest.mark.parametrize(("code", "name"), NAMES.items())
def test_names(code: int, name: str) -> None:
    assert getattr(status, name) == code
    assert status.status_name(code) == name
    signed = code - (1 << 32) if code >= 0x80000000 else code
    assert status.status_name(signed) == name


def test_severity() -> None:
    assert status.is_success(status.STATUS_PENDING)
    assert status.is_success(status.STATUS_TIMEOUT)
    assert not status.is_success(status.STATUS_BUFFER_OVERFLOW)  # a warning
    assert not status.is_error(status.STATUS_BUFFER_OVERFLOW)
    assert status.is_error(status.STATUS_CANCELLED)


@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_every_status_has_a_severity_and_a_printable_error(code: int) -> None:
    assert status.is_success(code) == (code < 0x80000000)
    error = NtStatusError(code, "NtSomething")
    assert isinstance(error, OSError)
    assert error.ntstatus == code
    assert f"0x{code:08X}" in str(error)
    assert str(error).startswith("NtSomething failed: ")
    name = status.status_name(code)
    assert error.status_name == name
    if name is None:
        assert "unknown NTSTATUS" in str(error)
    else:
        assert name in str(error)


def test_error_names_status_code_and_function() -> None:
    error = NtStatusError(0xC0000008, "NtClose")
    text = str(error)
    assert "NtClose failed" in text
    assert "STATUS_INVALID_HANDLE (0xC0000008)" in text
    assert error.function == "NtClose"


def test_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(NtStatusError(0xC0000120, "NtCancelIoFileEx")))
    assert error.ntstatus == 0xC0000120
    assert error.function == "NtCancelIoFileEx"


@pytest.mark.posix
def test_off_windows_there_is_no_win32_mapping() -> None:
    assert NtStatusError(0xC0000008).win32_error is None


WIN32_ERRORS = {
    status.STATUS_INVALID_HANDLE: 6,  # ERROR_INVALID_HANDLE
    status.STATUS_ACCESS_DENIED: 5,  # ERROR_ACCESS_DENIED
    status.STATUS_INVALID_PARAMETER: 87,  # ERROR_INVALID_PARAMETER
    status.STATUS_CANCELLED: 995,  # ERROR_OPERATION_ABORTED
    status.STATUS_PENDING: 997,  # ERROR_IO_PENDING
    status.STATUS_NOT_FOUND: 1168,  # ERROR_NOT_FOUND
    status.STATUS_PIPE_BROKEN: 109,  # ERROR_BROKEN_PIPE
    status.STATUS_OBJECT_NAME_NOT_FOUND: 2,  # ERROR_FILE_NOT_FOUND
}


@pytest.mark.windows
@pytest.mark.parametrize(("code", "win32"), WIN32_ERRORS.items(),
                         ids=[status.status_name(code) or "" for code in WIN32_ERRORS])
def test_win32_mapping_from_rtl(code: int, win32: int) -> None:
    error = NtStatusError(code, "NtTest")
    assert error.win32_error == win32
    assert f"Win32 error {win32}" in str(error)


@pytest.mark.windows
def test_unknown_status_still_gets_hex_and_win32_mapping() -> None:
    error = NtStatusError(0xC0DE0001)
    assert error.status_name is None
    assert "unknown NTSTATUS 0xC0DE0001" in str(error)
    assert error.win32_error == 317  # ERROR_MR_MID_NOT_FOUND: no mapping
    assert getattr(error, "winerror", None) == 317
    assert "Win32 error 317" in str(error)


@pytest.mark.windows
def test_winerror_and_errno_follow_the_mapping() -> None:
    import errno

    error = NtStatusError(status.STATUS_INVALID_HANDLE, "NtClose")
    assert getattr(error, "winerror", None) == 6
    assert error.errno == errno.EBADF
