"""Running one Faust worker in the foreground (``shopscore worker``)."""

from __future__ import annotations

import asyncio
import logging

import faust

from stream.app import create_app
from stream.settings import Settings
from stream.topics import ensure_topics

__all__ = ["run_worker"]


def run_worker(settings: Settings) -> None:
    """Create the contract topics, then run a worker until SIGINT/SIGTERM.

    Topics are created up front with the configured partition count, because Faust would
    otherwise create input topics on first use with whatever default the broker has, breaking
    co-partitioning of events and the users table.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(settings))
    shop = create_app(settings)
    logging.getLogger("shopscore").setLevel(settings.log_level.upper().replace("WARN", "WARNING"))
    worker = faust.Worker(
        shop.app,
        loop=loop,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=True,
    )
    worker.execute_from_commandline()
