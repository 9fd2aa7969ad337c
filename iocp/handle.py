"""An owned kernel handle: closed exactly once, by ``close()``, ``with``, or (with a warning) GC."""

from __future__ import annotations

import sys
import warnings
from types import TracebackType

from ntdll import functions as nt

__all__ = ["Handle"]


class Handle:
    """Owns one kernel handle and closes it with ``NtClose``.

    ``value`` raises ``ValueError`` once closed, so a closed handle is never passed to the
    kernel (where its number may already name another object). Dropping an open ``Handle``
    closes it and emits a ``ResourceWarning``, as an unclosed file does.
    """

    __slots__ = ("_value", "description")

    def __init__(self, value: int, description: str) -> None:
        if not value:
            raise ValueError(f"{description}: NULL handle")
        self._value: int | None = value
        self.description = description

    @property
    def value(self) -> int:
        if self._value is None:
            raise ValueError(f"{self.description}: the handle is closed")
        return self._value

    @property
    def closed(self) -> bool:
        return self._value is None

    def close(self) -> None:
        """Close the handle; later calls do nothing."""
        value, self._value = self._value, None
        if value is not None:
            nt.NtClose(value)

    def detach(self) -> int:
        """Give up ownership; returns the raw value, which the caller must close."""
        value = self.value
        self._value = None
        return value

    def detach_to_fd(self, flags: int) -> int:
        """Hand the handle over to a new C runtime file descriptor (what ``subprocess`` takes
        for a child's standard handle; closing the fd closes the handle). Windows only.
        ``flags`` as ``msvcrt.open_osfhandle`` (``os.O_RDONLY``, ``os.O_WRONLY``). If that
        fails, the handle is closed, never left unowned."""
        if sys.platform != "win32":
            raise NotImplementedError("C runtime file descriptors of handles are Windows-only")
        import msvcrt

        value = self.detach()
        try:
            return msvcrt.open_osfhandle(value, flags)
        except BaseException:
            nt.NtClose(value)
            raise

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._value is None else f"0x{self._value:x}"
        return f"<Handle {self.description} {state}>"

    def __del__(self) -> None:
        if getattr(self, "_value", None) is not None:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
            try:
                self.close()
            except OSError:
                pass
