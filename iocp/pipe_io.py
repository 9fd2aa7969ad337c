"""Overlapped pipe I/O: ``ReadFile`` / ``WriteFile`` on our end of an overlapped pipe.

See :mod:`iocp.overlapped_io` for the rules. Skip-on-success is safe on pipes (the handle is the
named-pipe file system's own) and is honoured there under Wine 8 too (ACTIVE_KB E14), so it is
set by default.

End of data: a pending read completes with ``STATUS_PIPE_BROKEN`` when the writer closes; a
read issued after that fails at once with ``ERROR_BROKEN_PIPE`` and queues nothing (F12).
:meth:`PipeIO.read` turns that failure into a read completed at once at end of data
(``at_end``), so a caller sees one kind of end whichever way it came. A write to a pipe whose
reader closed raises ``BrokenPipeError``.
"""

from __future__ import annotations

from typing import Any

from ntdll import functions as nt
from ntdll import status as ntstatus

from .file_io import ReadOperation
from .handle import Handle
from .overlapped_io import OverlappedIO
from .port import CompletionPort

__all__ = ["PipeIO"]


class PipeIO(OverlappedIO):
    """``ReadFile``/``WriteFile`` on an overlapped pipe end (:func:`iocp.create_pipe`).

    ``pipe`` is a :class:`Handle` or a raw handle value; with ``owns=True`` (a :class:`Handle`
    only) :meth:`close` also closes it.
    """

    _kind = "pipe"
    _read_call = staticmethod(nt.ReadFile)
    _write_call = staticmethod(nt.WriteFile)

    def __init__(self, port: CompletionPort, pipe: Handle | int, key: int, *,
                 skip_on_success: bool = True, owns: bool = True) -> None:
        if isinstance(pipe, int) and owns:
            raise ValueError("PipeIO can own a Handle only, not a raw handle value")
        super().__init__(port, pipe if isinstance(pipe, int) else pipe.value, key,
                         skip_on_success=skip_on_success)
        self._pipe = pipe
        self._owns = owns

    def read(self, size: int, tag: Any = None,
             operation: ReadOperation | None = None) -> ReadOperation:
        try:
            return super().read(size, tag, operation)
        except BrokenPipeError:
            # The writer closed and the pipe is empty: end of data, nothing queued.
            if operation is None:
                operation = ReadOperation(tag)
            operation._complete(ntstatus.STATUS_PIPE_BROKEN, 0)
            return operation

    def close(self) -> None:
        """Cancel pending requests and, if owned, close the pipe handle."""
        super().close()
        if self._owns and isinstance(self._pipe, Handle):
            self._pipe.close()
