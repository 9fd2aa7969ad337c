"""AfdSelector: a ``selectors.BaseSelector`` on :class:`AfdPoller`, with no socket ceiling.

A drop-in for ``selectors.DefaultSelector`` on Windows (whose ``SelectSelector`` is O(n) per
call and refuses more than 512 sockets per set): the same ``SelectorKey``s, the same exceptions
(``KeyError`` for an unknown or duplicate file object, ``ValueError`` for bad events or a bad
file descriptor), ``get_map`` and the context manager.
"""

from __future__ import annotations

import selectors
from collections.abc import Iterator, Mapping
from typing import Any

from .events import PollEvents
from .poller import AfdPoller

__all__ = ["AfdSelector"]

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
_READ_READY = PollEvents.IN | PollEvents.ERR | PollEvents.HUP
_WRITE_READY = PollEvents.OUT | PollEvents.ERR | PollEvents.HUP


def _file_descriptor(fileobj: Any) -> int:
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


def _interest(events: int) -> PollEvents:
    interest = PollEvents(0)
    if events & EVENT_READ:
        interest |= PollEvents.IN
    if events & EVENT_WRITE:
        interest |= PollEvents.OUT
    return interest


class _KeyMap(Mapping[Any, selectors.SelectorKey]):
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

    def __init__(self) -> None:
        self._poller = AfdPoller()
        self._keys: dict[int, selectors.SelectorKey] = {}
        self._map = _KeyMap(self)

    def _lookup(self, fileobj: object) -> int:
        """The fd of ``fileobj``, also for a closed one still registered (as the stdlib)."""
        try:
            return _file_descriptor(fileobj)
        except ValueError:
            for key in self._keys.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(EVENT_READ | EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = _file_descriptor(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
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
        if not events or events & ~(EVENT_READ | EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        if events == key.events and data is key.data:
            return key
        new_key = key._replace(events=events, data=data)
        try:
            self._poller.modify(key.fd, _interest(events), new_key)
        except FileNotFoundError:
            pass  # closed while registered; the key stays until unregistered, as with epoll
        self._keys[key.fd] = new_key
        return new_key

    def select(self, timeout: float | None = None
               ) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None:
            timeout = max(timeout, 0.0)  # selectors: a negative timeout polls
        max_events = max(len(self._keys), 1)
        ready: list[tuple[selectors.SelectorKey, int]] = []
        for key, events in self._poller.poll(timeout, max_events=max_events):
            assert isinstance(key, selectors.SelectorKey)
            current = self._keys.get(key.fd)
            if current is None:
                continue  # unregistered meanwhile
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
        self._keys.clear()
        self._poller.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map
