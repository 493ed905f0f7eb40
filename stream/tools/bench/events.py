"""Phase 1: the generated events every throughput phase reads, published once."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

from stream.settings import Settings
from stream.tools.replay import LogEvent, iter_generated, publish

__all__ = ["generate", "publish_events"]


def generate(n: int, seed: int) -> list[LogEvent]:
    """Exactly ``n`` valid synthetic events in event-time order (about 65 per user a month)."""
    from stream.tools.generator import GeneratorConfig, generate_events

    users = max(20, math.ceil(n / 55))
    while True:
        events, _truth = generate_events(GeneratorConfig(users=users, days=30, seed=seed))
        if len(events) >= n:
            return list(iter_generated(events[:n]))
        users = math.ceil(users * 1.3 * n / max(1, len(events)))


def publish_events(settings: Settings, events: Sequence[LogEvent]) -> float:
    """Publish ``events`` to ``settings``' input topics; returns the achieved events/s."""
    summary = asyncio.run(publish(settings, events))
    return summary.as_dict()["events_per_s"] or 0.0
