"""The asyncio event loop of ntafd, and the names to reach it the same way on every platform.

On Windows :class:`EventLoop` is :class:`~afd.aio_loop.AfdEventLoop`: a ``SelectorEventLoop``
with ``add_reader`` / ``add_writer`` for any number of sockets (AFD polls), subprocesses and
pipes (overlapped I/O), on one completion port. Elsewhere the same names give the stdlib's
default loop, so code that imports them runs everywhere::

    import asyncio
    from afd.asyncio_loop import new_event_loop

    asyncio.run(main(), loop_factory=new_event_loop)          # Python 3.12+
    with asyncio.Runner(loop_factory=new_event_loop) as runner:  # Python 3.11+
        runner.run(main())

    asyncio.set_event_loop_policy(EventLoopPolicy())          # 3.10 / 3.11 (policies are
    asyncio.run(main())                                       # deprecated from 3.14)
"""

from __future__ import annotations

import asyncio
import sys

__all__ = ["AfdEventLoopPolicy", "EventLoop", "EventLoopPolicy", "new_event_loop"]

if sys.platform == "win32":
    from .aio_loop import AfdEventLoop

    EventLoop: type[asyncio.AbstractEventLoop] = AfdEventLoop

    def new_event_loop() -> asyncio.AbstractEventLoop:
        """A new :class:`~afd.aio_loop.AfdEventLoop` (Windows)."""
        return AfdEventLoop()

    class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
        """A policy whose loops are :class:`AfdEventLoop`s, for Python 3.10 / 3.11 programs
        that use ``asyncio.run(main())`` without ``loop_factory``."""

        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return AfdEventLoop()
else:
    EventLoop = asyncio.SelectorEventLoop

    def new_event_loop() -> asyncio.AbstractEventLoop:
        """A new event loop of the stdlib's default kind (not Windows)."""
        return asyncio.new_event_loop()

    EventLoopPolicy = asyncio.DefaultEventLoopPolicy

AfdEventLoopPolicy = EventLoopPolicy
"""The name this module exported before :class:`EventLoopPolicy`; kept."""
