"""iocp: an I/O completion port wrapper over the NT native API.

:class:`CompletionPort` creates a port, associates handles, posts and dequeues completions in
batches. :class:`Operation` owns the memory the kernel writes into for one request; the port
keeps it alive until the request's completion is dequeued. ``iocp.file_io`` issues overlapped
reads and writes; ``iocp.pipes`` makes overlapped pipes.
"""

from .file_io import ReadOperation, WriteOperation, start_read, start_write
from .handle import Handle
from .operation import Operation, OperationBusyError, OperationState
from .pipes import create_pipe
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
    "PortClosedError",
    "ReadOperation",
    "WriteOperation",
    "create_pipe",
    "relative_timeout",
    "start_read",
    "start_write",
    "validate_timeout",
]
