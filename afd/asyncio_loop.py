"""asyncio on AfdSelector: a ``SelectorEventLoop`` with no 512-socket ceiling.

``asyncio.SelectorEventLoop`` on Windows uses ``select()``; given an :class:`AfdSelector` it
runs unchanged (streams, servers, clients) on AFD polls. Subprocesses and pipes are not
supported by a selector loop on Windows; use the Proactor loop for those.
"""

from __future__ import annotations

import asyncio

from .selector import AfdSelector

__all__ = ["AfdEventLoopPolicy", "new_event_loop"]


def new_event_loop() -> asyncio.SelectorEventLoop:
    """A new ``SelectorEventLoop`` running on an :class:`AfdSelector`."""
    return asyncio.SelectorEventLoop(AfdSelector())


class AfdEventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An event loop policy whose loops are :func:`new_event_loop`'s.

    ``asyncio.set_event_loop_policy(AfdEventLoopPolicy())`` then ``asyncio.run(main())``.
    """

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return new_event_loop()
