"""ChunkQueue (execsession.chunks): the session's buffers keep every byte, in order, whatever
the mix of appends, peeks of any size and partial consumes."""

from __future__ import annotations

import random

import pytest

from execsession.chunks import ChunkQueue


def test_random_appends_peeks_and_partial_consumes_match_a_bytearray() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        queue, reference = ChunkQueue(), bytearray()
        for _ in range(300):
            if rng.random() < 0.5:
                data = rng.randbytes(rng.randint(0, 60))
                queue.append(data)
                reference += data
            elif queue:
                limit = rng.randint(1, 150)
                head = queue.peek(limit)
                assert 1 <= len(head) <= limit and bytes(head) == reference[:len(head)]
                count = rng.randint(0, len(head))
                queue.consume(count)
                del reference[:count]
            assert len(queue) == len(reference) and bool(queue) == bool(reference)


def test_a_whole_chunk_is_handed_out_without_a_copy_and_small_ones_are_joined() -> None:
    queue = ChunkQueue()
    big = bytes(range(256)) * 4
    queue.append(big)
    assert queue.peek(4096) is big  # no copy per chunk
    assert queue.peek(100) == big[:100]
    queue.consume(len(big))
    for piece in (b"ab", b"cd", b"efg"):
        queue.append(piece)
    assert queue.peek(5) == b"abcd" and queue.peek(100) == b"abcdefg"
    queue.clear()
    assert not queue and queue.peek(10) == b""


def test_bad_arguments_say_what_was_wrong() -> None:
    queue = ChunkQueue()
    queue.append(b"xyz")
    with pytest.raises(ValueError, match="consume 4 of 3"):
        queue.consume(4)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        queue.peek(0)
