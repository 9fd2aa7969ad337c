"""AFD poll flags and the poll I/O control code."""

from __future__ import annotations

import functools
import operator

from hypothesis import given
from hypothesis import strategies as st

from afd import IOCTL_AFD_POLL, AfdPollEvents

EXPECTED = {
    "RECEIVE": 0x1, "RECEIVE_EXPEDITED": 0x2, "SEND": 0x4, "DISCONNECT": 0x8, "ABORT": 0x10,
    "LOCAL_CLOSE": 0x20, "CONNECT": 0x40, "ACCEPT": 0x80, "CONNECT_FAIL": 0x100, "QOS": 0x200,
    "GROUP_QOS": 0x400,
}


def test_flag_values() -> None:
    assert {flag.name: flag.value for flag in AfdPollEvents} == EXPECTED
    assert AfdPollEvents.all() == 0x7FF


def test_ioctl_afd_poll_is_the_afd_control_code_for_poll() -> None:
    # _AFD_CONTROL_CODE(request 9, METHOD_BUFFERED) = FILE_DEVICE_NETWORK << 12 | 9 << 2
    assert IOCTL_AFD_POLL == 0x12024 == (0x12 << 12) | (9 << 2) | 0


@given(st.sets(st.sampled_from(list(AfdPollEvents))))
def test_flag_sets_round_trip_through_int(members: set[AfdPollEvents]) -> None:
    combined = functools.reduce(operator.or_, members, AfdPollEvents(0))
    value = int(combined)
    again = AfdPollEvents(value)
    assert again == combined
    assert {member for member in AfdPollEvents if member & again} == members


@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_any_reported_value_is_kept(value: int) -> None:
    # The kernel may set bits this enum does not name; none may be lost.
    assert int(AfdPollEvents(value)) == value
