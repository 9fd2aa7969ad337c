"""Loopback helpers shared by the stages: a listening socket, a client that connects later."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


def listening_socket(backlog: int = 16) -> socket.socket:
    """A non-blocking TCP socket listening on an ephemeral 127.0.0.1 port.

    The backlog is set here: on Windows a second ``listen`` does not change it."""
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(backlog)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


@contextlib.contextmanager
def connect_later(address: tuple[str, int], delay: float, timeout: float) -> Iterator[None]:
    """While the block runs, a thread connects to ``address`` after ``delay`` seconds.

    On exit the thread is joined and its connection closed.
    """
    clients: list[socket.socket] = []

    def connect() -> None:
        clients.append(socket.create_connection(address, timeout=timeout))

    timer = threading.Timer(delay, connect)
    timer.start()
    try:
        yield
    finally:
        timer.join()
        for client in clients:
            client.close()


def accept_waiting(listener: socket.socket) -> Iterator[socket.socket]:
    """Every connection waiting on a non-blocking ``listener``, each made non-blocking (one
    readiness report may stand for several connections)."""
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        yield conn
