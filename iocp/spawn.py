"""Starting a child process: ``subprocess.Popen`` tried once more on Wine's rare
``CreateProcess`` ``ERROR_INTERNAL_ERROR``.

Both spawners of ntafd (``afd.aio_subprocess`` for the asyncio loop, ``execsession.iocp_child``
for the exec backend) start children whose stdio are :func:`iocp.child_stdio_pipe` ends; under
Wine 8.0, with other Wine processes busy, ``CreateProcess`` fails about once in ten full test
runs with ``ERROR_INTERNAL_ERROR`` (1359) and succeeds when called again (ACTIVE_KB WE3). Any
other failure, or a second 1359, is raised: a failure that persists is never hidden.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from typing import Any

__all__ = ["ERROR_INTERNAL_ERROR", "popen"]

log = logging.getLogger("iocp.spawn")

ERROR_INTERNAL_ERROR = 1359


def popen(args: Sequence[str] | str, **options: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(args, **options)``, called once more (with a warning) if the first
    call fails with ``ERROR_INTERNAL_ERROR``; a second one raises an ``OSError`` (``winerror``
    1359) saying that it failed twice, chained to the second failure."""
    try:
        return subprocess.Popen(args, **options)
    except OSError as error:
        if getattr(error, "winerror", None) != ERROR_INTERNAL_ERROR:
            raise
        log.warning("CreateProcess failed with ERROR_INTERNAL_ERROR (1359); trying once more")
    try:
        return subprocess.Popen(args, **options)
    except OSError as error:
        if getattr(error, "winerror", None) != ERROR_INTERNAL_ERROR:
            raise
        raise OSError(None, f"CreateProcess failed twice in a row with ERROR_INTERNAL_ERROR "
                            f"(1359) starting {args!r}: {error.strerror}", None,
                      ERROR_INTERNAL_ERROR) from error
