"""AfdSelector: a ``selectors.BaseSelector`` on :class:`AfdPoller`, with no socket ceiling.

A drop-in for ``selectors.DefaultSelector`` on Windows (``SelectSelector``, which is O(n) per
call and refuses more than 512 sockets per set). It keeps that class's whole contract, as
CPython 3.11's ``Lib/selectors.py`` defines it, and ``tests/test_selector_contract.py`` checks
each point against the stdlib itself:

- ``register``: ``ValueError`` for events beyond ``EVENT_READ | EVENT_WRITE`` (checked first) or a
  bad file object or descriptor; ``KeyError`` if its descriptor is registered (also as another
  object: ``fileobj`` and ``fileobj.fileno()`` are the same registration).
- A file object closed while registered is still found by identity (``get_key``,
  ``unregister``, ``modify``), as the stdlib's exhaustive lookup finds it.
- ``modify`` with other events is ``unregister`` + ``register``: the new key names the file
  object given to ``modify``, and if that ``register`` would fail (bad events, a closed file
  object) the registration is gone and the error raised. With the same events and data that
  compares unequal only ``data`` changes; equal (``==``) data returns the same key unchanged.
- ``close()``: ``get_map()`` returns ``None`` and ``get_key`` raises ``RuntimeError``; a mapping
  obtained before is empty. ``register`` and ``select`` raise ``ValueError`` (a closed poller),
  as the stdlib's selectors that own a kernel object (epoll, kqueue, devpoll) do.

Where the stdlib leaves it open, AfdSelector is stricter: registering a handle that is not a
socket raises ``NotASocketError`` (an ``OSError``) at once, where ``SelectSelector`` fails later
in ``select()``; a registered socket object that was closed is reported by no ``select()``, as
with epoll (``SelectSelector.select()`` raises ``OSError`` for it), and stays registered until
unregistered.
"""

from __future__ import annotations

import selectors
from collections.abc import Iterator, Mapping
from typing import Any

from iocp import CompletionPort

from .events import PollEvents
from .poller import AfdPoller, PollerClosedError

__all__ = ["AfdSelector"]

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
_READ_READY = PollEvents.IN | PollEvents.ERR | PollEvents.HUP
_WRITE_READY = PollEvents.OUT | PollEvents.ERR | PollEvents.HUP


def _file_descriptor(fileobj: Any) -> int:
    """The descriptor of ``fileobj`` (an int, or an object with ``fileno()``), as the stdlib."""
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _still_open(key: selectors.SelectorKey) -> bool:
    """Whether a key's file object still names its fd. A poll that completed before the socket
    was closed is still queued on the port; the closed socket must not be reported (epoll
    forgets a closed fd, ``select()`` raises for it). An int names no object: a socket
    registered by its fd and closed may be reported once more (then its re-armed poll fails
    and the poller drops it)."""
    fileobj = key.fileobj
    if isinstance(fileobj, int):
        return True
    try:
        return bool(fileobj.fileno() == key.fd)
    except (AttributeError, TypeError, ValueError, OSError):
        return False


def _check_events(events: int) -> None:
    if not events or events & ~(EVENT_READ | EVENT_WRITE):
        raise ValueError(f"Invalid events: {events!r}")


def _interest(events: int) -> PollEvents:
    interest = PollEvents(0)
    if events & EVENT_READ:
        interest |= PollEvents.IN
    if events & EVENT_WRITE:
        interest |= PollEvents.OUT
    return interest


class _KeyMap(Mapping[Any, selectors.SelectorKey]):
    """The read-only view ``get_map()`` returns: file objects (or fds) → keys."""

    def __init__(self, selector: AfdSelector) -> None:
        self._selector = selector

    def __len__(self) -> int:
        return len(self._selector._keys)

    def __getitem__(self, fileobj: object) -> selectors.SelectorKey:
        try:
            return self._selector._keys[self._selector._lookup(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._selector._keys)


class AfdSelector(selectors.BaseSelector):
    """A ``selectors`` selector for sockets, on AFD polls and an I/O completion port."""

    def __init__(self, *, port: CompletionPort | None = None) -> None:
        """``port``: as :class:`AfdPoller`'s (taken over; a new one by default)."""
        self._poller = AfdPoller(port=port)
        self._keys: dict[int, selectors.SelectorKey] = {}
        self._map: _KeyMap | None = _KeyMap(self)

    def _lookup(self, fileobj: object) -> int:
        """The fd of ``fileobj``, also for a closed one still registered (as the stdlib)."""
        try:
            return _file_descriptor(fileobj)
        except ValueError:
            for key in self._keys.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise

    def _check_open(self) -> None:
        if self._map is None:
            raise PollerClosedError("I/O operation on a closed AfdSelector")

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        _check_events(events)
        fd = self._lookup(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        self._check_open()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._poller.register(fd, _interest(events), key)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        try:
            key = self._keys.pop(self._lookup(fileobj))
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        try:
            self._poller.unregister(key.fd)
        except FileNotFoundError:
            pass  # closed while registered: the poller already dropped it
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        try:
            key = self._keys[self._lookup(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if events != key.events:
            # The stdlib's unregister + register, in one poller call.
            try:
                _check_events(events)
                _file_descriptor(fileobj)  # a closed file object cannot be registered again
                self._check_open()
                new_key = selectors.SelectorKey(fileobj, key.fd, events, data)
                self._poller.modify(key.fd, _interest(events), new_key)
            except FileNotFoundError:
                pass  # closed while registered; the key stays until unregistered, as with epoll
            except BaseException:
                self.unregister(fileobj)
                raise
            self._keys[key.fd] = new_key
            return new_key
        if data != key.data:
            # Only the data changes: the poll is left as it is (select() reports the
            # current key of each fd).
            key = key._replace(data=data)
            self._keys[key.fd] = key
        return key

    def select(self, timeout: float | None = None
               ) -> list[tuple[selectors.SelectorKey, int]]:
        self._check_open()
        if timeout is not None:
            timeout = max(timeout, 0.0)  # selectors: a negative timeout polls
        max_events = max(len(self._keys), 1)
        ready: list[tuple[selectors.SelectorKey, int]] = []
        for key, events in self._poller.poll(timeout, max_events=max_events):
            assert isinstance(key, selectors.SelectorKey)
            current = self._keys.get(key.fd)
            if current is None or not _still_open(current):
                continue  # unregistered meanwhile, or closed: no socket is ready
            mask = 0
            if events & _READ_READY:
                mask |= EVENT_READ
            if events & _WRITE_READY:
                mask |= EVENT_WRITE
            mask &= current.events
            if mask:
                ready.append((current, mask))
        return ready

    def close(self) -> None:
        """Release the poller; afterwards ``get_map()`` is ``None`` (as the stdlib's)."""
        self._keys.clear()
        self._map = None
        self._poller.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        """The registered file objects and their keys; ``None`` once closed, as the stdlib's
        (whose type, in typeshed too, does not say so)."""
        return self._map  # type: ignore[return-value]
