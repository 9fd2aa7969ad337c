"""Anonymous-style pipes built from named pipes, so either end can be overlapped.

``CreatePipe`` makes synchronous handles only; overlapped I/O on a pipe needs a named pipe
opened with ``FILE_FLAG_OVERLAPPED``. Each pair gets a unique name and accepts one client.
:func:`child_stdio_pipe` makes the pipe of one of a child's standard handles: our end
overlapped, the child's synchronous (a child expects ordinary handles).
"""

from __future__ import annotations

import itertools
import os
import secrets

from ntdll import functions as nt

from .handle import Handle

__all__ = ["DEFAULT_PIPE_BUFFER", "child_stdio_pipe", "create_pipe"]

DEFAULT_PIPE_BUFFER = 64 * 1024

PIPE_ACCESS_INBOUND = 0x00000001
FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000
FILE_FLAG_OVERLAPPED = 0x40000000
PIPE_TYPE_BYTE = 0x00000000
PIPE_READMODE_BYTE = 0x00000000
PIPE_WAIT = 0x00000000
PIPE_REJECT_REMOTE_CLIENTS = 0x00000008
GENERIC_WRITE = 0x40000000
FILE_READ_ATTRIBUTES = 0x00000080
OPEN_EXISTING = 3

_serial = itertools.count()


def create_pipe(*, overlapped_read: bool = True, overlapped_write: bool = True,
                buffer_size: int = DEFAULT_PIPE_BUFFER) -> tuple[Handle, Handle]:
    """Create a one-way byte pipe; returns ``(read_end, write_end)``.

    Each end is opened for overlapped I/O if asked (then every read or write on it must pass
    an ``OVERLAPPED``: use ``iocp.file_io`` through a port). Both handles are not inheritable.
    """
    if buffer_size <= 0:
        raise ValueError(f"buffer_size must be positive, not {buffer_size}")
    name = rf"\\.\pipe\ntafd-{os.getpid()}-{next(_serial)}-{secrets.token_hex(8)}"
    open_mode = PIPE_ACCESS_INBOUND | FILE_FLAG_FIRST_PIPE_INSTANCE
    if overlapped_read:
        open_mode |= FILE_FLAG_OVERLAPPED
    read_end = Handle(
        nt.CreateNamedPipeW(name, open_mode,
                            PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT
                            | PIPE_REJECT_REMOTE_CLIENTS,
                            1, buffer_size, buffer_size),
        f"pipe read end {name}",
    )
    try:
        write_end = Handle(
            nt.CreateFileW(name, GENERIC_WRITE | FILE_READ_ATTRIBUTES, 0, OPEN_EXISTING,
                           FILE_FLAG_OVERLAPPED if overlapped_write else 0),
            f"pipe write end {name}",
        )
    except BaseException:
        read_end.close()
        raise
    return read_end, write_end


def child_stdio_pipe(*, child_reads: bool,
                     buffer_size: int = DEFAULT_PIPE_BUFFER) -> tuple[Handle, int]:
    """The pipe of one standard handle of a child: returns ``(ours, theirs)``, our end (for
    overlapped I/O: we write if ``child_reads``, else we read) and the child's synchronous end
    as a C runtime file descriptor (what ``subprocess.Popen`` takes; close it once the child is
    started: ``subprocess`` gives the child its own inheritable duplicate). Windows only. If
    anything fails, both ends are closed."""
    if child_reads:
        theirs, ours = create_pipe(overlapped_read=False, overlapped_write=True,
                                   buffer_size=buffer_size)
    else:
        ours, theirs = create_pipe(overlapped_read=True, overlapped_write=False,
                                   buffer_size=buffer_size)
    try:
        fd = theirs.detach_to_fd(os.O_RDONLY if child_reads else os.O_WRONLY)
    except BaseException:
        ours.close()
        raise
    return ours, fd
