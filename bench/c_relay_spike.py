"""SPIKE, measurement only: ``ntafd-exec`` with each session's relay wholly in C.

    NTAFD_WINE_PYTHONPATH='Z:\\...\\.cache\\speedups\\optimized' \\
        tools/winpy -m bench.c_relay_spike -k -l 9000 -e python -S -u -c "..."

Takes the same arguments as ``python -m execsession``. Each session spawns its child as usual,
then, instead of its first pump, hands the socket and the child's stdin/stdout handles to
``ntafd_relay_spike`` (speedups/ntafd_speedups.c): a C loop that dequeues from the loop's port,
writes what a read brought to the other side, reissues the read once the write completed, and
continues at once whenever a request completed inline (skip-on-success). It returns at the
first EOF or error (after cancelling and draining its requests), and the session is aborted.

What it is for: the user CPU per 64-byte round trip a C relay step would leave (ACTIVE_KB
"Issue 10: the C relay step"). What it is not: a relay. It blocks the loop for the session's
life (one session at a time; other completions are set aside and re-posted when it returns), has
no flow control, byte counts, half-close, stderr, timers or inline budget, and needs the
speedups (it refuses to run on pure ctypes).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from execsession.__main__ import main
from execsession.session import ExecSession
from ntdll import speedups

log = logging.getLogger("bench.c_relay_spike")
_original_start = ExecSession.start


def _relay_in_c(session: Any) -> None:
    del session._pump  # later pumps (abort, exit) are the class's own
    native: Any = speedups.native
    streams = (session._client, session._child.stdin, session._child.stdout)
    ios = [stream._io for stream in streams]
    counts = native.ffi.new("uint64_t[2]")
    status = native._lib.ntafd_relay_spike(
        session.loop.port.handle, ios[0].handle, int(ios[0].skip_on_success),
        ios[1].handle, int(ios[1].skip_on_success), ios[2].handle,
        int(ios[2].skip_on_success), counts)
    log.info("C relay spike: status %d, %d completions, %d set aside", status, counts[0],
             counts[1])
    session.abort("c-relay-spike-done")


def _start(self: ExecSession) -> None:
    # start() ends with self._pump(): an instance attribute takes that one call.
    self._pump = lambda: _relay_in_c(self)  # type: ignore[method-assign]
    _original_start(self)


if __name__ == "__main__":
    if speedups.native is None:
        sys.exit(f"bench.c_relay_spike needs the speedups ({speedups.LOAD_ERROR})")
    ExecSession.start = _start  # type: ignore[method-assign]
    sys.exit(main())
