"""ChunkQueue: a session's buffer as the chunks its reads brought, not one growing bytearray.

Why: a ``bytearray`` store costs a copy in (``+=``), a slice and a ``bytes`` copy out per
write, and it is reallocated as it swings between empty and its largest size — under Wine the
Windows heap serves blocks over ~0.5 MiB straight from ``NtAllocateVirtualMemory`` (``mmap``),
so a 1 MiB buffer emptied and refilled maps and page-faults fresh memory each time (ACTIVE_KB,
issue 10: page faults per MiB 5x the threaded relay's at 1 MiB buffers). Here a read's
``bytes`` object — or the ``memoryview`` of its buffer that a backend hands out instead (the
IOCP streams: no copy at all, ACTIVE_KB W10) — is kept as it is and handed to the write as it
is: no copy in the session unless a write took only part of a chunk, or several small chunks
are joined into one write (fewer calls for interactive traffic).

Rules: the head is only dropped by :meth:`consume` (a write *completed* with that many bytes),
so a partial write loses and reorders nothing; :meth:`peek` returns the same bytes again until
then.
"""

from __future__ import annotations

from collections import deque

__all__ = ["ChunkQueue"]


class ChunkQueue:
    """FIFO of byte chunks with a read offset into the first one."""

    __slots__ = ("_chunks", "_offset", "size")

    def __init__(self) -> None:
        self._chunks: deque[bytes | memoryview] = deque()
        self._offset = 0  # bytes of _chunks[0] already consumed
        self.size = 0
        """Bytes queued (read it, never set it): what ``len()`` says, without the Python
        call ``len()`` makes — the session reads it ~20 times per round trip."""

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, data: bytes | memoryview) -> None:
        """Queue ``data`` (kept, not copied: pass ``bytes``, or a view nobody changes)."""
        if data:
            self._chunks.append(data)
            self.size += len(data)

    def peek(self, limit: int) -> bytes | memoryview:
        """The first ``min(limit, len(self))`` bytes at most (at least one byte if any are
        queued, ``limit`` >= 1): the first chunk itself when it fits whole, else a copy.
        Small chunks that fit together under ``limit`` are joined into one."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        chunks = self._chunks
        if not chunks:
            return b""
        first = chunks[0]
        offset = self._offset
        if offset or len(first) > limit:
            return first[offset:offset + limit]  # a partial chunk: a copy of that part
        if len(chunks) == 1 or len(first) + len(chunks[1]) > limit:
            return first
        parts = [first]
        taken = len(first)
        for chunk in list(chunks)[1:]:
            if taken + len(chunk) > limit:
                break
            parts.append(chunk)
            taken += len(chunk)
        return b"".join(parts)

    def consume(self, count: int) -> None:
        """Drop the first ``count`` bytes (a write completed with them)."""
        if not 0 <= count <= self.size:
            raise ValueError(f"consume {count} of {self.size} queued bytes")
        self.size -= count
        chunks = self._chunks
        count += self._offset
        while count and count >= len(chunks[0]):
            count -= len(chunks.popleft())
        self._offset = count
        if not chunks:
            self._offset = 0

    def clear(self) -> None:
        self._chunks.clear()
        self._offset = self.size = 0
