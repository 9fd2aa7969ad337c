"""ExecSessionConfig: buffer sizes, flow control, timeouts and the stderr mode of a session.

Every field is checked when the config is built; an invalid value raises :class:`ConfigError`
naming the field, so a bad command-line option or a typo in code fails before any process runs.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields

__all__ = ["ConfigError", "ExecSessionConfig", "StderrMode", "StdioMode"]

KIB = 1024


class ConfigError(ValueError):
    """An invalid :class:`ExecSessionConfig` field; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"ExecSessionConfig.{field}: {message}")
        self.field = field


class StderrMode(enum.Enum):
    MERGE = "merge"
    """The child's stderr is its stdout pipe: both reach the socket, in the order written."""
    SEPARATE = "separate"
    """The child's stderr is its own pipe, delivered to the session's ``stderr_sink``."""
    DISCARD = "discard"
    """The child's stderr is the null device."""


class StdioMode(enum.Enum):
    """Where the child's stdin and stdout are (``ExecServer`` and ``open_session`` read it;
    :class:`execsession.ExecSession` always relays)."""

    AUTO = "auto"
    """``socket`` where the loop can and the config needs nothing only a relay does (no
    ``idle_timeout`` or ``connect_timeout``, stderr not ``separate``), else ``pipes``."""
    SOCKET = "socket"
    """The connection itself, as inetd, systemd's ``Accept=yes`` and the original ``nc -e`` do
    (execsession.socket_stdio): no byte passes through the server; the child's exit ends the
    session and kills what it left running (``drain_timeout`` does not apply). The selectors
    loop on Linux only."""
    PIPES = "pipes"
    """Pipes relayed by the server (:class:`execsession.ExecSession`): every option applies."""


@dataclass(frozen=True, slots=True)
class ExecSessionConfig:
    """How one socket is relayed to one child process.

    Buffers (bytes the session holds on the child's behalf): ``stdin_buffer`` client → child
    stdin; ``stdout_buffer`` child stdout → client (in ``merge`` mode stderr shares the stdout
    pipe and this buffer); ``stderr_buffer`` is the stderr pipe's size and the largest chunk
    handed to the stderr sink in ``separate`` mode. Pipe sizes follow the buffers.
    Buffers that grow: the stdin and stdout buffers start at their configured sizes and double
    after reads that fill them (a busy stream: fewer, larger calls), up to ``max_buffer``
    (default 1 MiB; a buffer configured larger stays as configured) and only while the other
    buffer, at its configured size, still fits beside it under ``max_buffered``; they halve
    back to their configured size once reads find them empty and bring little (an idle
    stream).
    ``max_buffered`` caps the sum of the stdin and stdout buffers: no read is issued that could
    exceed it, so a session never holds more. 0 (the default) means both buffers at their
    largest: 2 MiB with the defaults. It must exceed each configured buffer, so that one
    direction stuck full can never starve the other.

    Flow control with hysteresis: a source (the socket, the child's stdout) stops being read
    when the bytes waiting in its buffer reach ``pause_threshold`` x its size, or those of all
    buffers reach ``pause_threshold`` x ``max_buffered``; it is read again once its waiting
    bytes are at or below ``resume_threshold`` x its size and the total at or below
    ``resume_threshold`` x ``max_buffered`` (or its own buffer is empty). Waiting bytes
    exclude those of a write in progress (at most half a buffer), so reading overlaps writing.
    The sizes are the current ones (grown or not): with a slow reader stdout pauses at 75 % of
    its size waiting and resumes at 25 %. Pauses are counted in the result.

    Timeouts in seconds, 0 = off: ``exec_timeout`` from the start, ``connect_timeout`` until the
    first byte relayed in either direction, ``idle_timeout`` since the last one. When one
    fires the child's process tree is killed and the connection closed. ``close_timeout``
    bounds the wait for the client's EOF after the output was sent and the child exited
    (data arriving then is discarded), so the socket closes gracefully instead of with a reset.

    ``drain_timeout`` (seconds, finite; 0 = at once): once the child itself has exited, its
    output is still relayed for this long if something it started (a backgrounded process)
    keeps its stdout open; then the whole tree is killed, what was already written is relayed
    to its end, and the session ends as ``exited`` with the child's exit code. The same on
    every backend.

    ``stdio``: a :class:`StdioMode` (or its value): ``auto`` (the default) gives the child the
    connection itself where it can, and relays through pipes otherwise.
    """

    stdin_buffer: int = 32 * KIB
    stdout_buffer: int = 64 * KIB
    stderr_buffer: int = 32 * KIB
    max_buffer: int = 1024 * KIB
    max_buffered: int = 0
    pause_threshold: float = 0.75
    resume_threshold: float = 0.25
    exec_timeout: float = 0.0
    connect_timeout: float = 0.0
    idle_timeout: float = 0.0
    close_timeout: float = 2.0
    drain_timeout: float = 2.0
    stderr: StderrMode = StderrMode.MERGE
    stdio: StdioMode = StdioMode.AUTO

    def __post_init__(self) -> None:
        for name, kind in (("stdio", StdioMode), ("stderr", StderrMode)):
            self._check_mode(name, kind)
        for name in ("stdin_buffer", "stdout_buffer", "stderr_buffer", "max_buffer",
                     "max_buffered"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(name, f"expected an int number of bytes, not {value!r}")
            if name == "max_buffered" and value == 0:
                continue  # automatic, below
            if not 1 <= value <= 1 << 30:
                raise ConfigError(name, f"must be between 1 byte and 1 GiB, not {value}")
        if self.max_buffered == 0:
            object.__setattr__(self, "max_buffered",
                               max(self.stdin_buffer, self.max_buffer)
                               + max(self.stdout_buffer, self.max_buffer))
        largest = max(self.stdin_buffer, self.stdout_buffer)
        if self.max_buffered <= largest:
            raise ConfigError("max_buffered", f"{self.max_buffered} must exceed the largest "
                                              f"buffer ({largest}), or one direction stuck "
                                              "full could starve the other")
        for name in ("pause_threshold", "resume_threshold"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value <= 1:
                raise ConfigError(name, f"must be a fraction in (0, 1], not {value!r}")
        if self.resume_threshold >= self.pause_threshold:
            raise ConfigError("resume_threshold",
                              f"{self.resume_threshold} must be below pause_threshold "
                              f"({self.pause_threshold}), or reading would never pause")
        for name in ("exec_timeout", "connect_timeout", "idle_timeout", "close_timeout",
                     "drain_timeout"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < math.inf:
                meaning = "at once" if name == "drain_timeout" else "off"
                raise ConfigError(name, f"must be a finite number of seconds >= 0 "
                                        f"(0 = {meaning}), not {value!r}")
        if self.stdio is StdioMode.SOCKET and self.needs_relay is not None:
            raise ConfigError("stdio", f"socket: {self.needs_relay} needs the bytes to pass "
                                       "through the server (stdio=pipes)")

    def _check_mode(self, name: str, kind: type[enum.Enum]) -> None:
        """Field ``name`` is a ``kind`` member, or its value (then made the member)."""
        value = getattr(self, name)
        if isinstance(value, str):
            try:
                object.__setattr__(self, name, kind(value))
            except ValueError:
                choices = ", ".join(mode.value for mode in kind)
                raise ConfigError(name, f"{value!r} is not one of {choices}") from None
        elif not isinstance(value, kind):
            raise ConfigError(name, f"expected a {kind.__name__}, not {value!r}")

    @property
    def needs_relay(self) -> str | None:
        """What in this config only a relay through pipes can do (``None``: nothing): the
        reason ``stdio=socket`` is refused and ``auto`` relays."""
        if self.stderr is StderrMode.SEPARATE:
            return "stderr=separate"
        if self.idle_timeout:
            return "idle_timeout"
        if self.connect_timeout:
            return "connect_timeout"
        return None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and not math.isnan(value))
