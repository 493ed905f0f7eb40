"""Whether the broker answers, made visible (``/health``, ``shopscore_broker_up``) and bounded.

(Stub: filled in by the broker-faults work.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream.app import ShopscoreApp

__all__ = ["BrokerWatch", "install"]


class BrokerWatch:
    """The broker's health as this worker sees it."""

    def __init__(self, worker: ShopscoreApp) -> None:
        self.worker = worker

    def status(self) -> dict[str, Any]:
        """Fields merged into ``GET /health``; ``broker_up`` False makes the worker not ready."""
        return {"broker_up": True}


def install(worker: ShopscoreApp) -> BrokerWatch:
    """Create the watch and register its timers on ``worker.app``."""
    return BrokerWatch(worker)
