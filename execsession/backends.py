"""Choosing an exec backend: ``iocp`` on Windows, ``selectors`` elsewhere.

Kept apart from :mod:`execsession.loop` (the interface the backends implement), so that no
import cycle runs between the interface and the backends.
"""

from __future__ import annotations

import os
import sys

from .loop import Loop

__all__ = ["BACKENDS", "BACKEND_ENV", "default_backend", "open_loop"]

BACKEND_ENV = "NTAFD_EXEC_BACKEND"
"""Environment variable that overrides the backend choice (``iocp`` or ``selectors``)."""
BACKENDS = ("iocp", "selectors")


def default_backend() -> str:
    """``$NTAFD_EXEC_BACKEND`` if set, else ``iocp`` on Windows and ``selectors`` elsewhere."""
    chosen = os.environ.get(BACKEND_ENV, "").strip().lower()
    if chosen:
        if chosen not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV}={chosen!r}: expected one of {', '.join(BACKENDS)}")
        return chosen
    return "iocp" if sys.platform == "win32" else "selectors"


def open_loop(backend: str | None = None) -> Loop:
    """A new loop on ``backend`` (default: :func:`default_backend`)."""
    backend = backend or default_backend()
    if backend == "iocp":
        if sys.platform != "win32":
            raise ValueError("the iocp backend needs Windows (or Wine); this is "
                             f"{sys.platform!r}: use the selectors backend")
        from .iocp_backend import IocpLoop
        return IocpLoop()
    if backend == "selectors":
        if sys.platform == "win32":
            raise ValueError("the selectors backend needs POSIX pipes (select() on Windows "
                             "takes sockets only): use the iocp backend")
        from .posix_backend import SelectorLoop
        return SelectorLoop()
    raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
