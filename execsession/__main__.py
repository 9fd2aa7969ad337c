"""``python -m execsession`` / ``ntafd-exec``: a one-thread exec server, like ``ncat -l -e``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
from collections.abc import Sequence
from types import FrameType

from .backends import BACKEND_ENV, BACKENDS, default_backend, open_loop
from .config import ConfigError, ExecSessionConfig, StderrMode, StdioMode
from .server import DEFAULT_MAX_CONNS, AddressFilter, ExecServer, is_loopback_host, parse_listen

USAGE = "%(prog)s -l [HOST:]PORT [options] (-e PROG [ARGS ...] | -c CMD)"
DESCRIPTION = """\
Listen for TCP connections and connect each one to a new process: the client's bytes go to
the process's stdin, its stdout (and stderr, by default) go back to the client. All
connections are served by one thread (I/O completion ports on Windows, selectors elsewhere).
"""
EPILOG = """\
Examples:
  %(prog)s -l 8000 -e cat                     serve one client with cat, then exit
  %(prog)s -l 8000 -k -m 50 -e python3 -u x.py  keep serving, 50 clients at once at most
  %(prog)s -l 0.0.0.0:8000 --bind-public --allow 10.0.0.0/8 -k -c "sort | uniq -c"

When the client closes its side, the process's stdin is closed once all it sent is written;
when the process closes its output, the connection is half-closed once all of it is sent.
A client that disconnects, or a timeout, kills the process and everything it started.
When the process exits while something it started still holds its output, that output is
relayed for --drain-timeout more seconds, then the rest of its tree is killed.

On Linux the process gets the connection itself as its stdin and stdout (--stdio socket, as
inetd and the original nc -e do): no byte passes through this server, and the process's exit
ends the connection (what it left running is killed). The options that need the bytes to pass
through the server (--stderr separate, --idle-timeout, --connect-timeout, --drain-timeout,
--buffer, --max-buffer) relay through pipes instead, as --stdio pipes and Windows always do.

Ctrl-C or SIGTERM stops accepting, kills the children and exits; so does any other way out
(an internal error included): no child outlives the server, not even after SIGKILL.
"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 0 (0 = no timeout)")
    return value


def _size(text: str) -> int:
    multiplier = 1
    lowered = text.strip().lower()
    for suffix, factor in (("k", 1024), ("m", 1024 * 1024)):
        if lowered.endswith(suffix):
            lowered, multiplier = lowered[:-1], factor
    try:
        return int(lowered) * multiplier
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 65536, 64k)") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntafd-exec", usage=USAGE, description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-l", "--listen", metavar="[HOST:]PORT", required=True,
                        help="address to listen on (host defaults to 127.0.0.1)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("-e", "--exec", dest="argv", nargs=argparse.REMAINDER,
                      metavar="PROG [ARGS]",
                      help="run PROG with ARGS, no shell (must come last)")
    what.add_argument("-c", "--sh-exec", dest="shell_command", metavar="CMD",
                      help="run CMD through the shell (/bin/sh -c, or cmd.exe /c on Windows)")
    parser.add_argument("-k", "--keep-open", action="store_true",
                        help="accept clients until stopped (default: serve one, then exit)")
    parser.add_argument("-m", "--max-conns", type=int, default=DEFAULT_MAX_CONNS, metavar="N",
                        help="most clients served at once; others are closed at once "
                             f"(default {DEFAULT_MAX_CONNS}, 0 = no limit)")
    parser.add_argument("--allow", action="append", default=[], metavar="IP[/BITS]",
                        help="accept only these clients (repeat, or separate with commas; "
                             "an empty item is an error)")
    parser.add_argument("--deny", action="append", default=[], metavar="IP[/BITS]",
                        help="refuse these clients (repeat, or separate with commas; "
                             "IPv4-mapped IPv6 networks match IPv4 clients)")
    parser.add_argument("--bind-public", action="store_true",
                        help="allow listening on a non-loopback address")
    parser.add_argument("--exec-timeout", type=_positive_float, default=0.0, metavar="SECS",
                        help="kill the process this long after it started (0 = never)")
    parser.add_argument("--idle-timeout", type=_positive_float, default=0.0, metavar="SECS",
                        help="kill it after this long without a byte either way (0 = never)")
    parser.add_argument("--connect-timeout", type=_positive_float, default=0.0,
                        metavar="SECS",
                        help="kill it if no byte moved within this long of the start "
                             "(0 = never)")
    parser.add_argument("--drain-timeout", type=_positive_float, default=None,
                        metavar="SECS",
                        help="once the process exited, relay the output of what it left "
                             "running for this long, then kill it (default 2; 0 = at once)")
    parser.add_argument("--stderr", choices=[mode.value for mode in StderrMode],
                        default="merge",
                        help="the process's stderr: to the client with stdout (merge, the "
                             "default), to this server's stderr (separate), or dropped")
    parser.add_argument("--buffer", type=_size, default=None, metavar="BYTES",
                        help="stdout buffer's starting size (default 64k; stdin and stderr "
                             "get half)")
    parser.add_argument("--max-buffer", type=_size, default=None, metavar="BYTES",
                        help="the stdin and stdout buffers double while reads fill them, up "
                             "to this (default 1m); a session holds at most both at this size")
    parser.add_argument("--stdio", choices=[mode.value for mode in StdioMode], default="auto",
                        help="the process's stdin and stdout: the connection itself (socket; "
                             "Linux), pipes this server relays (pipes), or socket unless an "
                             "option needs the relay (auto, the default)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="I/O backend (default: iocp on Windows, selectors elsewhere)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log connections and exits (-vv: more)")
    return parser


def _config(args: argparse.Namespace) -> ExecSessionConfig:
    sizes = {}
    if args.buffer is not None:
        half = max(1, args.buffer // 2)
        sizes = {"stdout_buffer": args.buffer, "stdin_buffer": half, "stderr_buffer": half}
    if args.max_buffer is not None:
        sizes["max_buffer"] = args.max_buffer
    if args.drain_timeout is not None:
        sizes["drain_timeout"] = args.drain_timeout
    stdio = args.stdio
    if stdio == StdioMode.AUTO.value and sizes:
        stdio = StdioMode.PIPES.value  # a relay's options asked for: the relay it is
    return ExecSessionConfig(exec_timeout=args.exec_timeout, idle_timeout=args.idle_timeout,
                             connect_timeout=args.connect_timeout, stderr=args.stderr,
                             stdio=stdio, **sizes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.argv is not None and not args.argv:
        parser.error("-e needs a program to run")
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="ntafd-exec: %(message)s", stream=sys.stderr)
    try:
        host, port = parse_listen(args.listen)
        config = _config(args)
        # Every item counts: an empty one (`--allow ""`, `--allow a,`) is an error, never
        # silently dropped (an allow list emptied that way would let everyone in).
        address_filter = AddressFilter(
            [item for value in args.allow for item in value.split(",")],
            [item for value in args.deny for item in value.split(",")])
    except (ValueError, ConfigError) as error:
        parser.error(str(error))
    if args.max_conns < 0:
        parser.error("--max-conns must be >= 0")
    if not args.bind_public and not is_loopback_host(host):
        parser.error(f"{host} is not a loopback address: anyone who can reach it could run "
                     "the command; add --bind-public if that is what you want")

    def sink(data: bytes) -> None:
        sys.stderr.buffer.write(data)
        sys.stderr.flush()

    program: list[str] = list(args.argv or ())
    command: list[str] | str = args.shell_command if args.shell_command is not None else program
    try:
        loop = open_loop(args.backend or default_backend())
    except ValueError as error:  # a backend this platform lacks, or a bad $NTAFD_EXEC_BACKEND
        source = "--backend" if args.backend else f"${BACKEND_ENV}"
        parser.error(f"{source}: {error}")
    try:
        try:
            server = ExecServer(
                loop, (host, port), command,
                shell=args.shell_command is not None, config=config,
                keep_open=args.keep_open, max_conns=args.max_conns,
                address_filter=address_filter, bind_public=args.bind_public,
                stderr_sink=sink if config.stderr is StderrMode.SEPARATE else None)
        except (OSError, ValueError) as error:
            print(f"ntafd-exec: cannot listen on {host}:{port}: {error}", file=sys.stderr)
            return 2
        logging.getLogger("execsession").info(
            "listening on %s:%d (%s backend, %s)", server.address[0], server.address[1],
            loop.backend, "the connection as the process's stdio" if server.socket_stdio
            else "relayed through pipes")
        stopping: list[int] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stopping.append(signum)
            loop.call_soon_threadsafe(server.close)

        signals = [signal.SIGINT, signal.SIGTERM]
        if hasattr(signal, "SIGHUP"):
            signals.append(signal.SIGHUP)  # the terminal went away
        previous = {signum: signal.signal(signum, on_signal) for signum in signals}
        status = 0
        try:
            loop.run(until=lambda: server.done)
        except Exception as error:  # a bug: say so, and still take every child down
            print("ntafd-exec: internal error, stopping:\n"
                  + "".join(traceback.format_exception(error)).rstrip(), file=sys.stderr)
            status = 1
        finally:
            # Every way out (done, a signal, an error, even KeyboardInterrupt here): stop
            # accepting, kill every child's tree and wait (bounded) until each is reaped.
            server.shutdown()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if stopping:
            logging.getLogger("execsession").info("stopped by signal %d", stopping[0])
        return status
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
