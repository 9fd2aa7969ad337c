"""execsession: relay sockets to child processes, many sessions on one thread.

:class:`ExecSession` relays one socket to one child's stdin/stdout/stderr through pipes;
:class:`SocketStdioSession` gives the child the socket itself (Linux); :class:`ExecServer`
accepts clients and starts a session for each, the one ``ExecSessionConfig.stdio`` picks
(:func:`open_session`; ``python -m execsession`` is its command line).
Both run on a :class:`Loop` from :func:`open_loop`: the ``iocp`` backend on Windows (child stdio
on overlapped named pipes, the socket through AFD polls, all on one I/O completion port, the
child's tree in a job object) or the ``selectors`` backend on POSIX (non-blocking pipes, the
child's tree in its own process group). ``$NTAFD_EXEC_BACKEND`` or an argument overrides the
choice.
"""

from .backends import BACKEND_ENV, BACKENDS, default_backend, open_loop
from .config import ConfigError, ExecSessionConfig, StderrMode, StdioMode
from .loop import Child, Loop, Process, Stream
from .server import AddressFilter, ExecServer, parse_listen
from .session import ExecSession, SessionResult
from .socket_stdio import SocketStdioSession, open_session

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "AddressFilter",
    "Child",
    "ConfigError",
    "ExecServer",
    "ExecSession",
    "ExecSessionConfig",
    "Loop",
    "Process",
    "SessionResult",
    "SocketStdioSession",
    "StderrMode",
    "StdioMode",
    "Stream",
    "default_backend",
    "open_loop",
    "open_session",
    "parse_listen",
]
