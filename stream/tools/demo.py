"""The traffic ``shopscore run`` streams: a shop's recent history, then live events for ever.

Lap 0 is the generator's log of the ``days`` before now, compressed into the demo's rate: the
history a shop already has when it adopts shopscore. Every later lap is a new log of the same
users (the next seed), published live: each valid event carries the time it is sent, so event
time follows the wall clock from then on, and the demo runs until Ctrl-C without going late or
ahead of the workers' clock. Dirt keeps its own timestamps (unparseable, or ten years ahead),
so the dead-letter path stays visible. A later lap's event and order ids carry the lap number,
so it is never taken for duplicates of an earlier one.

The next lap is generated in a thread while the current one streams.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from stream.tools.generator import GeneratorConfig, generate_events

__all__ = ["DemoOptions", "demo_events"]

DAY_MS = 86_400_000


@dataclass(frozen=True)
class DemoOptions:
    users: int = 2000
    days: float = 30
    seed: int = 7
    rate: float | None = 2000.0
    max_events: int | None = None
    bad_fraction: float = 0.01
    duplicate_fraction: float = 0.005


def _now_ms() -> int:
    return int(time.time() * 1000)


def demo_events(
    demo: DemoOptions, *, clock: Callable[[], int] = _now_ms
) -> Iterator[dict[str, Any]]:
    """The demo's events in publishing order: at most ``demo.max_events``, else without end.

    Live laps read ``clock()`` (epoch ms) as each event is taken, so take them as they are sent.
    """
    now = clock()
    first = GeneratorConfig(
        users=demo.users,
        days=demo.days,
        seed=demo.seed,
        start_ms=(now // DAY_MS) * DAY_MS - round(demo.days * DAY_MS),
        bad_fraction=demo.bad_fraction,
        duplicate_fraction=demo.duplicate_fraction,
    )
    left = demo.max_events
    pool = ThreadPoolExecutor(1, thread_name_prefix="shopscore-demo")
    try:
        config = first
        upcoming: Future[Any] | None = pool.submit(generate_events, config)
        lap = 0
        while upcoming is not None:
            events, _truth = upcoming.result()
            if not events:
                return
            upcoming = None
            following = dataclasses.replace(
                first, seed=first.seed + lap + 1, start_ms=max(clock(), config.end_ms)
            )
            if left is None or left > len(events):
                upcoming = pool.submit(generate_events, following)
            sent_at: dict[str, int] = {}  # a planted duplicate repeats its original's time
            for event in events:
                if left is not None:
                    if left <= 0:
                        return
                    left -= 1
                yield event if lap == 0 else _live(event, lap, config, clock, sent_at)
            config = following
            lap += 1
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _live(
    event: dict[str, Any],
    lap: int,
    config: GeneratorConfig,
    clock: Callable[[], int],
    sent_at: dict[str, int],
) -> dict[str, Any]:
    event = dict(event)
    for name in ("event_id", "order_id"):
        value = event.get(name)
        if isinstance(value, str) and value:
            event[name] = f"{value}.{lap}"
    ts = event.get("ts")
    if isinstance(ts, int) and config.start_ms <= ts <= config.end_ms:
        key = event.get("event_id")
        if isinstance(key, str) and key:
            event["ts"] = sent_at.setdefault(key, clock())
        else:
            event["ts"] = clock()
    return event
