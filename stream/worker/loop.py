"""The event loop a worker (and ``shopscore bench``'s Faust baselines) runs on.

uvloop, libuv's event loop, measured 13% more events/s through the full scoring path here (and
+23% on a consume-only Faust agent): a worker spends much of its time in the event loop's own
machinery (futures, callbacks, socket reads). ``SHOPSCORE_EVENT_LOOP=asyncio`` keeps the
standard library's; a platform without uvloop (Windows) falls back to it with a warning.
"""

from __future__ import annotations

import asyncio
import logging

__all__ = ["new_event_loop"]

log = logging.getLogger("shopscore")


def new_event_loop(kind: str = "uvloop") -> asyncio.AbstractEventLoop:
    """A new event loop of ``kind``, set as the current one; Faust's threads (the consumer's)
    get the same kind, through the event loop policy."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed here; running on asyncio's event loop")
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop
