"""AFD poll event flags and the poll I/O control code."""

from __future__ import annotations

import enum

__all__ = ["IOCTL_AFD_POLL", "AfdPollEvents"]

IOCTL_AFD_POLL = 0x00012024
"""``_AFD_CONTROL_CODE(AFD_POLL = 9, METHOD_BUFFERED)``:
``FILE_DEVICE_NETWORK (0x12) << 12 | 9 << 2``."""


class AfdPollEvents(enum.IntFlag):
    """The ``Events`` bits of ``AFD_POLL_HANDLE_INFO``: asked for on input, reported on output."""

    RECEIVE = 0x0001
    """Data can be received (or a graceful close is pending: a receive returns 0 bytes)."""
    RECEIVE_EXPEDITED = 0x0002
    """Out-of-band data can be received."""
    SEND = 0x0004
    """Data can be sent."""
    DISCONNECT = 0x0008
    """The peer closed its sending side (graceful)."""
    ABORT = 0x0010
    """The connection was reset or aborted."""
    LOCAL_CLOSE = 0x0020
    """The socket was closed in this process; the poll ends."""
    CONNECT = 0x0040
    """Connected. Reported on every poll once connected: never ask for it in a readiness loop."""
    ACCEPT = 0x0080
    """A listening socket has a connection to accept."""
    CONNECT_FAIL = 0x0100
    """A connect attempt failed."""
    QOS = 0x0200
    GROUP_QOS = 0x0400

    @classmethod
    def all(cls) -> AfdPollEvents:
        return cls(0x07FF)
