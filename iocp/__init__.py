"""iocp: an I/O completion port wrapper over the NT native API.

:class:`CompletionPort` creates a port, associates handles, posts and dequeues completions in
batches. :class:`Operation` owns the memory the kernel writes into for one request; the port
keeps it alive until the request's completion is dequeued. ``iocp.file_io`` issues overlapped
reads and writes; ``iocp.pipes`` makes overlapped pipes (and a child's stdio pipes);
``iocp.spawn`` starts a child (``subprocess.Popen``, tried once more on Wine's rare
``ERROR_INTERNAL_ERROR``). :class:`SocketIO` and :class:`PipeIO` (``iocp.overlapped_io``'s
rules) read and write sockets and pipes with requests that complete at once handled inline
(skip-on-success) and the others through the port.
"""

from .file_io import ReadOperation, ViewWriteOperation, WriteOperation, start_read, start_write
from .handle import Handle
from .operation import Operation, OperationBusyError, OperationState
from .overlapped_io import OverlappedIO, set_skip_on_success
from .pipe_io import PipeIO
from .pipes import child_stdio_pipe, create_pipe
from .port import (
    PACKET,
    WAKEUP_KEY,
    Completion,
    CompletionPort,
    IssueResult,
    PortClosedError,
    relative_timeout,
    validate_timeout,
)
from .socket_io import SocketIO, skip_is_safe

__all__ = [
    "PACKET",
    "WAKEUP_KEY",
    "Completion",
    "CompletionPort",
    "Handle",
    "IssueResult",
    "Operation",
    "OperationBusyError",
    "OperationState",
    "OverlappedIO",
    "PipeIO",
    "PortClosedError",
    "ReadOperation",
    "SocketIO",
    "ViewWriteOperation",
    "WriteOperation",
    "child_stdio_pipe",
    "create_pipe",
    "relative_timeout",
    "set_skip_on_success",
    "skip_is_safe",
    "start_read",
    "start_write",
    "validate_timeout",
]
