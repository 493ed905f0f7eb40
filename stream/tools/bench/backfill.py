"""Phase 8: a history backfill. A shop's orders-only history (no clicks, no carts), months long,
replayed into one fresh worker with ``replay --until T`` (T the end of the history), timed
until every customer's latest ``scores.churn`` is valid at T: what a new shop waits for before
its first churn scores can be trusted.

``backfill_s`` runs from the first record published to the Kafka timestamp of the last
``scores.churn`` record that made a customer valid at T; ``backfill_eps`` is the orders over
it. Compared with ``throughput_eps`` (mixed live traffic through the same path), it shows what
sparse events over long event-time spans cost: labels falling due, clock and stream-time ticks.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson

from stream.settings import Settings
from stream.tools.bench.common import Progress
from stream.tools.bench.records import iter_records
from stream.tools.embedded import WorkerProcess, read_worker_metrics
from stream.tools.generator.orders_only import OrdersOnlyConfig, generate_orders_only
from stream.tools.replay import iter_generated, publish

__all__ = ["BACKFILL_DAYS", "backfill"]

#: The history's length: about the 9 months of the real retailer's history behind the issue.
BACKFILL_DAYS = 270.0


def backfill(
    settings: Settings, users: int, seed: int, workdir: Path, progress: Progress
) -> dict[str, Any]:
    """Replay ``users`` customers' generated order history into a fresh worker; the figures."""
    config = OrdersOnlyConfig(users=users, days=BACKFILL_DAYS, seed=seed)
    orders, _truth = generate_orders_only(config)
    until = config.end_ms
    customers = {o["user_id"] for o in orders}
    events = list(iter_generated(orders))
    worker = WorkerProcess(settings, log_path=workdir / "backfill.log").start()
    try:
        worker.wait_ready(timeout=120)
        started = time.time()
        summary = asyncio.run(publish(settings, events, until_ms=until)).as_dict()
        published_s = time.time() - started
        progress(
            f"backfill: {len(events):,} orders of {len(customers):,} customers over "
            f"{BACKFILL_DAYS:.0f} days published in {published_s:.1f}s; waiting for every "
            "churn score to be valid at the history's end"
        )
        last_ms = _wait_valid_at(settings, customers, until, worker, timeout=600 + len(events) / 20)
        counts = read_worker_metrics(worker.url)
    finally:
        worker.stop()
    seconds = max(last_ms / 1000 - started, 1e-3)
    progress(
        f"backfill: every customer valid at T after {seconds:.1f}s = "
        f"{len(events) / seconds:,.0f} orders/s"
    )
    return {
        "orders": len(events),
        "customers": len(customers),
        "days": BACKFILL_DAYS,
        "seconds": round(seconds, 2),
        "eps": round(len(events) / seconds, 1),
        "published": summary.get("published"),
        "applied": int(counts.applied),
        "rejected": int(counts.rejected_total),
    }


def _wait_valid_at(
    settings: Settings, customers: set[str], until: int, worker: WorkerProcess, timeout: float
) -> float:
    """Read ``scores.churn`` as it grows until every customer's latest record has ``ts ==
    until``; the Kafka timestamp (ms) of the record that made the last one valid."""
    topic = settings.topic("scores.churn")
    wanted = {c.encode() for c in customers}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc is not None and worker.proc.poll() is not None:
            raise RuntimeError(f"the backfill worker exited (log {worker.log_path})")
        # Per customer, when its scores became valid at T (and stayed so), read from the start.
        valid_at: dict[bytes, int] = {}
        for record in asyncio.run(_records(settings, topic)):
            if record.key is None or record.value is None:
                continue
            if orjson.loads(record.value).get("ts") == until:
                valid_at.setdefault(record.key, record.timestamp)
            else:
                valid_at.pop(record.key, None)
        if wanted <= valid_at.keys():
            return float(max(valid_at[k] for k in wanted))
        time.sleep(2.0)
    raise TimeoutError(f"some customers had no churn score valid at T after {timeout:.0f}s")


async def _records(settings: Settings, topic: str) -> list[Any]:
    return [r async for r in iter_records(settings, topic)]
