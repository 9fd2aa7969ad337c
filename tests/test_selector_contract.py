"""The stdlib selector contract, checked against the stdlib itself.

Each test runs against ``selectors.SelectSelector`` (Windows' ``DefaultSelector``, which
``AfdSelector`` replaces) and ``AfdSelector``: every expectation written here holds for the
stdlib class, so a difference is AfdSelector's. The contract is CPython 3.11's
``Lib/selectors.py`` (``_BaseSelectorImpl``, ``SelectSelector``) and the cases of its
``Lib/test/test_selectors.py``. SelectSelector runs in every leg, AfdSelector in the Wine legs.

Where SelectSelector cannot be the reference (after ``close()`` it keeps working, having no
kernel object to release; on Windows ``select()`` with nothing registered fails) the reference
is the stdlib selector that owns a kernel object as AfdSelector does: ``EpollSelector``, in the
Linux leg.
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from afd import AfdSelector

R, W = selectors.EVENT_READ, selectors.EVENT_WRITE
NOT_A_FILE: Any = object()

STDLIB_AND_AFD = [
    pytest.param(selectors.SelectSelector, id="SelectSelector"),
    pytest.param(AfdSelector, id="AfdSelector", marks=pytest.mark.windows),
]
KERNEL_BACKED = [
    pytest.param(getattr(selectors, "EpollSelector", None), id="EpollSelector",
                 marks=pytest.mark.posix),
    pytest.param(AfdSelector, id="AfdSelector", marks=pytest.mark.windows),
]


@pytest.fixture(params=STDLIB_AND_AFD)
def selector(request: pytest.FixtureRequest) -> Iterator[selectors.BaseSelector]:
    with request.param() as chosen:
        yield chosen


@pytest.fixture(params=KERNEL_BACKED)
def kernel_selector(request: pytest.FixtureRequest) -> Iterator[selectors.BaseSelector]:
    with request.param() as chosen:
        yield chosen


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    first, second = socket.socketpair()
    with first, second:
        yield first, second


class FilenoOf:
    """Another object with the same ``fileno()`` (or any value it is given)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def fileno(self) -> Any:
        return self.value


def registered(selector: selectors.BaseSelector) -> dict[Any, selectors.SelectorKey]:
    mapping = selector.get_map()
    assert mapping is not None
    return dict(mapping.items())


# -- register ----------------------------------------------------------------------------------
def test_register_returns_the_key_that_get_key_and_get_map_return(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    first, _ = pair
    key = selector.register(first, R, "data")
    assert key == selectors.SelectorKey(first, first.fileno(), R, "data")
    assert type(key) is selectors.SelectorKey
    assert selector.get_key(first) is key
    assert registered(selector) == {first.fileno(): key}


@pytest.mark.parametrize("events", [0, 4, R | W | 4, 999999, -1])
def test_register_refuses_events_beyond_read_and_write(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket],
        events: int) -> None:
    with pytest.raises(ValueError, match="Invalid events"):
        selector.register(pair[0], events)
    with pytest.raises(ValueError, match="Invalid events"):
        selector.register(NOT_A_FILE, events)  # the events are checked first
    assert registered(selector) == {}


@pytest.mark.parametrize(("fileobj", "message"), [
    (-1, "Invalid file descriptor: -1"),
    (-10, "Invalid file descriptor: -10"),
    (object(), "Invalid file object"),
    ("text", "Invalid file object"),
    (1.5, "Invalid file object"),
    (None, "Invalid file object"),
    (FilenoOf("abc"), "Invalid file object"),
    (FilenoOf(None), "Invalid file object"),
    (FilenoOf(-1), "Invalid file descriptor: -1"),
], ids=["-1", "-10", "object", "str", "float", "None", "fileno-str", "fileno-None",
        "fileno-negative"])
def test_register_refuses_a_bad_file_object(selector: selectors.BaseSelector, fileobj: Any,
                                            message: str) -> None:
    with pytest.raises(ValueError, match=message):
        selector.register(fileobj, R)
    assert registered(selector) == {}


def test_register_refuses_a_closed_socket(selector: selectors.BaseSelector) -> None:
    sock = socket.socket()
    sock.close()
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        selector.register(sock, R)


def test_one_descriptor_is_one_registration_whatever_names_it(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    first, _ = pair
    selector.register(first, R)
    for other_name in (first, first.fileno(), FilenoOf(first.fileno())):
        with pytest.raises(KeyError, match="already registered"):
            selector.register(other_name, W)
    assert selector.get_key(first).events == R


def test_an_int_and_its_socket_name_the_same_key(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = pair
    by_fd = selector.register(first.fileno(), R)
    assert by_fd.fileobj == first.fileno()
    assert selector.get_key(first) is by_fd
    mapping = selector.get_map()
    assert mapping is not None and first in mapping and FilenoOf(first.fileno()) in mapping
    assert selector.unregister(first) is by_fd

    by_object = selector.register(second, W)
    assert selector.get_key(second.fileno()) is by_object
    assert selector.unregister(second.fileno()) is by_object
    assert registered(selector) == {}


# -- unregister --------------------------------------------------------------------------------
def test_unregister_of_what_is_not_registered(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = pair
    with pytest.raises(KeyError, match="is not registered"):
        selector.unregister(999999)
    with pytest.raises(KeyError):
        selector.unregister(second)
    key = selector.register(first, R)
    assert selector.unregister(first) is key
    with pytest.raises(KeyError):
        selector.unregister(first)  # twice
    with pytest.raises(ValueError, match="Invalid file object"):
        selector.unregister(NOT_A_FILE)  # not a file object at all: the lookup's ValueError


# -- modify ------------------------------------------------------------------------------------
def test_modify_events_gives_a_new_key_naming_the_object_given(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    first, _ = pair
    key = selector.register(first, R, "data")
    changed = selector.modify(first, W, "other")
    assert changed == selectors.SelectorKey(first, first.fileno(), W, "other")
    assert selector.get_key(first) is changed
    # As unregister + register: the new key's file object is the one given to modify.
    by_fd = selector.modify(first.fileno(), R | W, "fd")
    assert by_fd == selectors.SelectorKey(first.fileno(), first.fileno(), R | W, "fd")
    assert selector.get_key(first) is by_fd
    assert key.events == R  # keys are values: the old one is unchanged


def test_modify_data_alone_keeps_the_file_object(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    first, _ = pair
    d1, d2 = object(), object()
    key = selector.register(first, R, d1)
    changed = selector.modify(first.fileno(), R, d2)
    assert changed == selectors.SelectorKey(first, first.fileno(), R, d2)
    assert changed.fileobj is first  # data alone: the key is updated, not re-registered
    assert selector.get_key(first) is changed
    assert key.data is d1


def test_modify_with_equal_data_returns_the_same_key(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    first, _ = pair
    data = [1, 2]
    key = selector.register(first, R, data)
    equal_not_identical = [1, 2]
    assert selector.modify(first, R, equal_not_identical) is key
    assert selector.get_key(first).data is data  # compared with ==, not `is`
    assert selector.modify(first, R, data) is key


@pytest.mark.parametrize("events", [0, 4, R | W | 4])
def test_modify_with_invalid_events_raises_and_leaves_it_unregistered(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket],
        events: int) -> None:
    first, _ = pair
    selector.register(first, R)
    with pytest.raises(ValueError, match="Invalid events"):
        selector.modify(first, events)
    assert registered(selector) == {}  # the stdlib's unregister ran before its register failed


def test_modify_of_what_is_not_registered(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    with pytest.raises(KeyError, match="is not registered"):
        selector.modify(999999, R)
    with pytest.raises(KeyError):
        selector.modify(pair[0], R)
    with pytest.raises(ValueError, match="Invalid file object"):
        selector.modify(NOT_A_FILE, R)
    assert registered(selector) == {}


# -- a socket closed while registered ----------------------------------------------------------
def test_a_socket_closed_while_registered_is_found_by_identity(
        selector: selectors.BaseSelector) -> None:
    first, second = socket.socketpair()
    key = selector.register(first, R, "first")
    selector.register(second, W, "second")
    first.close()
    second.close()
    assert selector.get_key(first) is key
    mapping = selector.get_map()
    assert mapping is not None and first in mapping
    with pytest.raises(KeyError, match="already registered"):
        selector.register(first, R)  # found by identity, so a duplicate
    # Data alone changes in place ...
    changed = selector.modify(first, R, "changed")
    assert changed == selectors.SelectorKey(first, key.fd, R, "changed")
    # ... but other events mean registering the closed socket again, which fails.
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        selector.modify(second, R)
    assert list(registered(selector).values()) == [changed]
    assert selector.unregister(first) is changed
    assert registered(selector) == {}


def test_a_descriptor_closed_while_registered_can_be_unregistered(
        selector: selectors.BaseSelector) -> None:
    first, second = socket.socketpair()
    r, w = first.fileno(), second.fileno()
    selector.register(r, R)
    selector.register(w, W)
    first.close()
    second.close()
    assert selector.unregister(r).fd == r
    assert selector.unregister(w).fd == w


def test_a_closed_socket_that_was_never_registered(selector: selectors.BaseSelector) -> None:
    sock = socket.socket()
    sock.close()
    with pytest.raises(ValueError, match="Invalid file descriptor"):
        selector.get_key(sock)
    with pytest.raises(ValueError, match="Invalid file descriptor"):
        selector.unregister(sock)
    with pytest.raises(ValueError, match="Invalid file descriptor"):
        selector.modify(sock, R)


# -- get_map / get_key -------------------------------------------------------------------------
def test_get_map_is_a_read_only_mapping_of_fds(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = pair
    keys = selector.get_map()
    assert keys is not None
    assert not keys and len(keys) == 0 and list(keys) == []
    assert keys.get(first) is None
    key = selector.register(first, R, "data")
    assert first in keys and first.fileno() in keys and second not in keys
    assert keys.get(first) is key and keys[first] is key
    sentinel = object()
    assert keys.get(second, sentinel) is sentinel
    assert len(keys) == 1 and list(keys) == [first.fileno()]
    assert list(keys.values()) == [key] and list(keys.items()) == [(first.fileno(), key)]
    with pytest.raises(KeyError, match="is not registered"):
        keys[999999]
    with pytest.raises(KeyError):
        selector.get_key(999999)
    with pytest.raises(ValueError, match="Invalid file object"):
        keys["text"]  # type: ignore[index]  # the lookup's ValueError, not a KeyError
    with pytest.raises(TypeError):
        del keys[first]  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        keys[second] = key  # type: ignore[index]
    selector.unregister(first)
    assert first not in keys and len(keys) == 0


# -- close -------------------------------------------------------------------------------------
def test_after_close_get_map_is_none_and_get_key_raises(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = pair
    mapping = selector.get_map()
    assert mapping is not None
    selector.register(first, R)
    selector.register(second, W)
    selector.close()
    assert selector.get_map() is None
    with pytest.raises(RuntimeError, match="Selector is closed"):
        selector.get_key(first)
    assert len(mapping) == 0 and mapping.get(first) is None
    with pytest.raises(KeyError):
        mapping[first]
    with pytest.raises(KeyError):
        selector.unregister(first)
    with pytest.raises(KeyError):
        selector.modify(second, R)
    selector.close()  # again: nothing happens
    assert selector.get_map() is None


@pytest.mark.parametrize("selector_class", STDLIB_AND_AFD)
def test_the_context_manager_closes(selector_class: type[selectors.BaseSelector],
                                    pair: tuple[socket.socket, socket.socket]) -> None:
    with selector_class() as entered:
        entered.register(pair[0], R)
    with pytest.raises(RuntimeError):
        entered.get_key(pair[0])


def test_after_close_register_and_select_raise_value_error(
        kernel_selector: selectors.BaseSelector,
        pair: tuple[socket.socket, socket.socket]) -> None:
    kernel_selector.close()
    with pytest.raises(ValueError):
        kernel_selector.register(pair[0], R)
    with pytest.raises(ValueError):
        kernel_selector.select(timeout=0)
    with pytest.raises(ValueError, match="Invalid events"):
        kernel_selector.register(pair[0], 4)


# -- select ------------------------------------------------------------------------------------
def settle(selector: selectors.BaseSelector,
           expected: list[tuple[selectors.SelectorKey, int]]) -> None:
    """Select until ``expected`` has been reported (a completion-based selector may report
    sockets ready at the same moment in two calls): every report must be one of ``expected``,
    its key the current one, its events no more than expected."""
    wanted = {key.fd: (key, events) for key, events in expected}
    seen: dict[int, int] = {}
    for _ in range(20):
        for key, events in selector.select(timeout=5):
            assert key.fd in wanted, f"{key} reported, only {expected} expected"
            assert key is wanted[key.fd][0], f"{key} is not the current key"
            assert events & ~wanted[key.fd][1] == 0, f"{key} reported with {events}"
            seen[key.fd] = seen.get(key.fd, 0) | events
        if seen == {fd: events for fd, (_, events) in wanted.items()}:
            return
    raise AssertionError(f"reported {seen}, expected {expected}")


def test_select_reports_what_each_key_asked_for(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    first, second = pair
    writer = selector.register(second, W, "writer")
    assert selector.select(timeout=5) == [(writer, W)]
    selector.unregister(second)
    second.send(b"x")
    reader = selector.register(first, R, "reader")
    assert selector.select(timeout=5) == [(reader, R)]  # waits for the byte to arrive
    writer = selector.register(second, W, "writer")
    # first is writable too, but asked for reading only; second's read side is idle.
    settle(selector, [(reader, R), (writer, W)])
    both = selector.modify(first, R | W, "both")
    settle(selector, [(both, R | W), (writer, W)])
    selector.unregister(second)
    settle(selector, [(both, R | W)])
    assert selector.select(timeout=5) == [(both, R | W)]  # level-triggered: again


def test_select_reports_the_current_key_after_modify_of_data(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    first, _ = pair
    selector.register(first, W, "old")
    new = selector.modify(first, W, "new")
    [(key, events)] = selector.select(timeout=5)
    assert key is new and events == W


@pytest.mark.parametrize("timeout", [0, -1, 0.0, -0.5])
def test_a_timeout_at_or_below_zero_polls(
        selector: selectors.BaseSelector, pair: tuple[socket.socket, socket.socket],
        timeout: float) -> None:
    first, second = pair
    reader = selector.register(first, R)
    assert selector.select(timeout) == []
    second.send(b"x")
    assert selector.select(timeout=5) == [(reader, R)]  # the data is there now ...
    assert selector.select(timeout) == [(reader, R)]    # ... and a poll reports it


def test_select_with_nothing_registered_returns_nothing(
        kernel_selector: selectors.BaseSelector) -> None:
    # (SelectSelector on Windows cannot: select() refuses three empty sets.)
    assert kernel_selector.select(timeout=0) == []
    assert kernel_selector.select(timeout=0.05) == []


def test_a_registered_socket_closed_is_reported_no_more_and_stays_registered(
        kernel_selector: selectors.BaseSelector) -> None:
    # (SelectSelector's select() raises OSError for it: select() refuses a closed descriptor.)
    first, second = socket.socketpair()
    with second:
        key = kernel_selector.register(first, R | W)
        second.send(b"x")
        first.close()
        assert kernel_selector.select(timeout=0.3) == []
        assert kernel_selector.get_key(first) is key
        assert kernel_selector.unregister(first) is key
