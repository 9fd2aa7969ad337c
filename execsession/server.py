"""ExecServer: listen, check each client against allow/deny and max-conns, and give each one a
session on the shared loop: the connection itself as the child's stdio
(:class:`~execsession.socket_stdio.SocketStdioSession`) or a relay through pipes
(:class:`~execsession.session.ExecSession`), as ``config.stdio`` says."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import traceback
from collections.abc import Callable, Iterable, Sequence

from .config import ExecSessionConfig
from .loop import Loop
from .session import EXIT_GRACE, SessionBase, SessionResult
from .socket_stdio import open_session, uses_socket_stdio

__all__ = ["DEFAULT_BACKLOG", "DEFAULT_MAX_CONNS", "AddressFilter", "ExecServer",
           "is_loopback_host", "parse_listen"]

log = logging.getLogger("execsession.server")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MAX_CONNS = 100
"""Sessions at once unless told otherwise (``ntafd-exec -m``'s default too)."""
ACCEPT_BACKOFF = 0.1
"""Seconds to stop accepting after ``accept`` failed for lack of fds or memory."""
ACCEPT_BACKOFF_MAX = 5.0
"""Longest pause after repeated unexpected ``accept`` failures (doubling from ACCEPT_BACKOFF)."""
DEFAULT_BACKLOG = socket.SOMAXCONN
"""Listen queue length unless told otherwise: the system's largest (Linux caps it at
``net.core.somaxconn``, 4096 by default). With 128, a burst of 1,000 connects overflowed the
queue while the loop was busy starting sessions; each dropped SYN costs its client a 1 s
retransmit (ACTIVE_KB L10-2: five or seven of them were most of the 1,000-session time)."""
ACCEPTS_PER_EVENT = 64
"""Most connections accepted (or skipped) per readiness event, so a flood cannot starve the
sessions' I/O."""
_OUT_OF_RESOURCES_ERRNO = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_OUT_OF_RESOURCES_WINERROR = {10024, 10055}  # WSAEMFILE, WSAENOBUFS
# Errors about the one connection being accepted (it was reset or refused before we took it):
# skip it and accept the next one.
_CONNECTION_ERRNO = {errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO, errno.EPERM,
                     errno.ETIMEDOUT}
_CONNECTION_WINERROR = {10053, 10054, 10060}  # WSAECONNABORTED, WSAECONNRESET, WSAETIMEDOUT


def _out_of_resources(error: OSError) -> bool:
    return (error.errno in _OUT_OF_RESOURCES_ERRNO
            or getattr(error, "winerror", None) in _OUT_OF_RESOURCES_WINERROR)


def _about_the_connection(error: OSError) -> bool:
    return (error.errno in _CONNECTION_ERRNO
            or getattr(error, "winerror", None) in _CONNECTION_WINERROR)


def parse_listen(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``[HOST:]PORT`` (IPv6 hosts in brackets: ``[::1]:8000``) → ``(host, port)``."""
    host, separator, port_text = text.rpartition(":")
    if not separator:
        host = default_host
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: put an IPv6 address in brackets, e.g. [::1]:8000")
    if not host:
        host = default_host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: the port must be a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: the port must be between 0 and 65535")
    return host, port


def is_loopback_host(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address (an empty host, which
    ``socket.bind`` takes for every interface, is not)."""
    if not host.strip():
        return False
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    addresses = {str(info[4][0]) for info in infos}
    return bool(addresses) and all(_is_loopback_address(address) for address in addresses)


def _is_loopback_address(text: str) -> bool:
    """Whether ``text`` (an IP address, perhaps scoped or IPv4-mapped) is loopback."""
    address = ipaddress.ip_address(text.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
"""IPv4-mapped IPv6 addresses: ``::ffff:a.b.c.d`` is the IPv4 client ``a.b.c.d`` seen through
an IPv6 socket, so it is matched as that IPv4 address."""
_ALL_IPV4 = ipaddress.IPv4Network("0.0.0.0/0")


def _normalise_network(network: Network) -> list[Network]:
    """The networks to match clients (IPv4-mapped ones as IPv4) against, for ``network``.

    An IPv6 network inside ``::ffff:0:0/96`` names IPv4 clients: it becomes that IPv4 network
    (``::ffff:10.0.0.0/104`` → ``10.0.0.0/8``). One that contains the whole mapped range
    (``::/0``) also names every IPv4 client. Otherwise a network matches only its own version.
    """
    if isinstance(network, ipaddress.IPv6Network):
        if network.subnet_of(_MAPPED):
            return [ipaddress.IPv4Network(
                (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))]
        if network.supernet_of(_MAPPED):
            return [network, _ALL_IPV4]
    return [network]


class AddressFilter:
    """``--allow`` / ``--deny``: IP addresses and CIDR networks. A client is accepted if it is
    in no deny network and, when allow networks are given, in one of them.

    Nothing fails open: an empty item (``--allow ""``, ``--allow ,``) is an error, not an empty
    list that would let everyone in; an IPv4 client matches networks written in IPv4 or as
    IPv4-mapped IPv6 (``::ffff:10.0.0.0/104``), whichever form the socket reports it in; a
    scoped address (``fe80::1%eth0``) is matched without its scope.
    """

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self.allow = self._networks(allow, "allow")
        self.deny = self._networks(deny, "deny")

    @staticmethod
    def _networks(items: Iterable[str], option: str) -> list[Network]:
        if isinstance(items, str | bytes):
            raise TypeError(f"--{option}: expected a list of networks, not the string "
                            f"{items!r}")
        networks: list[Network] = []
        for text in items:
            if not isinstance(text, str):
                raise TypeError(f"--{option} {text!r}: expected a string")
            if not text.strip():
                raise ValueError(f"--{option} {text!r}: an empty item (an empty variable, or "
                                 "a stray comma?) names no network")
            try:
                network = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                raise ValueError(f"--{option} {text!r}: not an IP address or CIDR "
                                 "network") from None
            networks.extend(_normalise_network(network))
        return networks

    def permits(self, host: str) -> bool:
        """Whether the client at ``host`` (an IP address as ``accept`` reports it) may connect.
        Raises ``ValueError`` for a host that is not an IP address."""
        address = ipaddress.ip_address(host.split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.deny):
            return False
        return not self.allow or any(address in network for network in self.allow)


class ExecServer:
    """Accepts clients on ``(host, port)`` and runs ``command`` for each, on ``loop``.

    Without ``keep_open`` the first accepted client is the only one: the listener closes and
    the server is :attr:`done` when that session ends. ``max_conns`` (default
    :data:`DEFAULT_MAX_CONNS`, as ``ntafd-exec``; 0 = no limit) caps the sessions running at
    once: a client beyond it, or one the filter refuses, is accepted and closed at once (a
    clean FIN, no data). :meth:`close` stops accepting and kills every child.

    Anyone who can connect runs ``command``: a host that is not loopback raises
    ``ValueError`` unless ``bind_public=True`` (``--bind-public``). On Windows the listener
    has ``SO_EXCLUSIVEADDRUSE``, so no other process can bind the port and take its clients.
    """

    def __init__(self, loop: Loop, address: tuple[str, int], command: Sequence[str] | str, *,
                 shell: bool = False, config: ExecSessionConfig | None = None,
                 keep_open: bool = False, max_conns: int = DEFAULT_MAX_CONNS,
                 address_filter: AddressFilter | None = None,
                 stderr_sink: Callable[[bytes], None] | None = None,
                 on_session_done: Callable[[SessionResult], None] | None = None,
                 backlog: int = DEFAULT_BACKLOG, bind_public: bool = False) -> None:
        if isinstance(max_conns, bool) or not isinstance(max_conns, int) or max_conns < 0:
            raise ValueError(f"max_conns must be an int >= 0 (0 = no limit), not {max_conns!r}")
        self.loop = loop
        self.command = command
        self.shell = shell
        self.config = config or ExecSessionConfig()
        self.keep_open = keep_open
        self.max_conns = max_conns
        self.filter = address_filter or AddressFilter()
        self.stderr_sink = stderr_sink
        self.on_session_done = on_session_done
        self.sessions: set[SessionBase] = set()
        self.results: list[SessionResult] = []
        self.refused = 0
        self._accepted_one = False
        self._accept_paused = False
        self._accept_backoff = ACCEPT_BACKOFF
        self._closed = False
        infos = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, sockaddr = infos[0]
        listener = socket.socket(family, kind, proto)
        try:
            if hasattr(socket, "SO_EXCLUSIVEADDRUSE"):  # Windows: no one else may bind the port
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
            elif hasattr(socket, "SO_REUSEADDR"):  # POSIX: rebind past TIME_WAIT only
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(sockaddr)
            # Checked on the address bound, not on what a resolver says of the name; nothing
            # is accepted before listen().
            bound = str(listener.getsockname()[0])
            if not bind_public and not _is_loopback_address(bound):
                raise ValueError(f"{address[0]!r} is not a loopback address ({bound}): anyone "
                                 "who can reach it could run the command; pass "
                                 "bind_public=True if that is wanted")
            # stdio=socket where the loop cannot: refused before anyone connects.
            self.socket_stdio = uses_socket_stdio(loop, listener, self.config)
            """Whether clients' children get the connection itself as their stdio."""
            listener.listen(backlog)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener: socket.socket | None = listener
        self.address: tuple[str, int] = listener.getsockname()[:2]
        loop.add_acceptor(listener, self._on_acceptable)

    @property
    def done(self) -> bool:
        """Closed (or, without ``keep_open``, its one client served) and no session left."""
        return (self._closed or (not self.keep_open and self._accepted_one)) and not self.sessions

    def _on_acceptable(self) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            if self._listener is None or self._accept_paused:
                return
            try:
                conn, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if _about_the_connection(error):
                    log.debug("accept failed: %s; skipping that client", str(error))
                    continue
                # Out of fds or memory, or anything unexpected (a broken listener): the
                # listener stays ready, so accepting again at once would spin at 100 % CPU.
                # Stop watching it for a while instead (longer after each failure in a row).
                resources = _out_of_resources(error)
                delay = ACCEPT_BACKOFF if resources else self._accept_backoff
                log.log(logging.WARNING if resources else logging.ERROR,
                        "accept failed: %s; pausing accepts for %.1f s", str(error), delay)
                if not resources:
                    self._accept_backoff = min(ACCEPT_BACKOFF_MAX, delay * 2)
                self._pause_accepting(delay)
                return
            self._accept_backoff = ACCEPT_BACKOFF
            try:
                self._admit(conn, peer)
            except Exception as error:  # this client only: the server keeps serving
                log.error("admitting %s failed; closing that connection:\n%s", peer,
                          "".join(traceback.format_exception(error)).rstrip())
                try:
                    conn.close()
                except OSError:
                    pass
        # More may be waiting: the listener is still ready, so the loop calls again.

    def _pause_accepting(self, delay: float = ACCEPT_BACKOFF) -> None:
        if self._listener is None:
            return
        self._accept_paused = True
        self.loop.remove_acceptor(self._listener)
        self.loop.call_later(delay, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._accept_paused = False
        if self._listener is not None:
            self.loop.add_acceptor(self._listener, self._on_acceptable)

    def _admit(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        host = str(peer[0])
        if not self.filter.permits(host):
            log.info("refused %s:%s (not allowed)", host, peer[1])
            self._refuse(conn)
            return
        if self.max_conns and len(self.sessions) >= self.max_conns:
            log.info("refused %s:%s (%d connections already)", host, peer[1], len(self.sessions))
            self._refuse(conn)
            return
        log.info("connection from %s:%s", host, peer[1])
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session: SessionBase = open_session(
            conn, self.command, loop=self.loop, config=self.config, shell=self.shell,
            stderr_sink=self.stderr_sink,
            on_done=lambda result: self._session_done(session, result))
        self.sessions.add(session)
        if not self.keep_open:
            self._accepted_one = True
            self._stop_listening()
        try:
            session.start()
        except Exception as error:  # ends this session (and reports it), not the server
            log.error("starting the session for %s failed:\n%s", host,
                      "".join(traceback.format_exception(error)).rstrip())
            session.callback_failed(error)

    def _refuse(self, conn: socket.socket) -> None:
        self.refused += 1
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()

    def _session_done(self, session: SessionBase, result: SessionResult) -> None:
        self.sessions.discard(session)
        self.results.append(result)
        log.info("child %s: %s, exit code %s", session.pid, result.reason, result.returncode)
        if self.on_session_done is not None:
            try:
                self.on_session_done(result)
            except Exception as error:  # the user's hook: logged, the server keeps serving
                log.error("on_session_done failed:\n%s",
                          "".join(traceback.format_exception(error)).rstrip())

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            if not self._accept_paused:
                self.loop.remove_acceptor(listener)
            listener.close()

    def close(self) -> None:
        """Stop accepting and kill every session's child (they end once reaped)."""
        self._closed = True
        self._stop_listening()
        for session in list(self.sessions):
            try:
                session.abort("server-shutdown")
            except Exception as error:
                log.error("aborting session pid %s failed: %s", session.pid, str(error))
                session.close()

    def shutdown(self, timeout: float = EXIT_GRACE) -> None:
        """:meth:`close`, run the loop until every session has ended (at most ``timeout``
        seconds), then end any session left by force: its tree killed, everything released.
        Call it on the loop's thread, outside the loop (e.g. when :meth:`Loop.run` returned or
        raised); it is what ``ntafd-exec`` does on every way out, so no child outlives it."""
        self.close()
        if self.sessions and not self.loop.closed:
            try:
                self.loop.run(until=lambda: not self.sessions, timeout=timeout)
            except Exception as error:  # a broken loop: end the sessions without it
                log.error("the loop failed while shutting down: %s", str(error))
        for session in list(self.sessions):
            session.close("server-shutdown")
            self.sessions.discard(session)
