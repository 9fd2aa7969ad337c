"""afd.asyncio_loop off Windows: the same names give the stdlib's default loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from afd import asyncio_loop

Runner: Any = getattr(asyncio, "Runner", None)  # Python 3.11+ (the Wine legs run 3.11)


@pytest.mark.posix
def test_the_same_names_give_the_stdlib_loop_elsewhere() -> None:
    assert asyncio_loop.EventLoop is asyncio.SelectorEventLoop
    assert asyncio_loop.EventLoopPolicy is asyncio.DefaultEventLoopPolicy

    async def kind() -> type:
        return type(asyncio.get_running_loop())

    default = asyncio.new_event_loop()
    try:
        expected = type(default)
    finally:
        default.close()
    with Runner(loop_factory=asyncio_loop.new_event_loop) as runner:
        assert runner.run(kind()) is expected
