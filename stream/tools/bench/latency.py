"""Phases 5 and 6: end-to-end latency of live events published at a fixed rate."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from stream.contract.events import TOPIC_OF_KIND
from stream.errors import ShopscoreError
from stream.kafka.admin import ensure_topics
from stream.settings import Settings
from stream.tools.bench.common import Progress, budget, poll_reached, rss_mb
from stream.tools.bench.full import produced_by_topic
from stream.tools.bench.records import read_until
from stream.tools.embedded import WorkerProcess, read_worker_metrics
from stream.tools.replay import LogEvent

__all__ = ["latency", "paced_publish", "percentiles"]


def percentiles(values: Sequence[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles, plus the max.

    >>> percentiles([5, 1, 4, 2, 3], (50, 100))
    {'p50': 3, 'p100': 5, 'max': 5}
    """
    ordered = sorted(values)
    out: dict[str, float] = {}
    for q in qs:
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        out[f"p{q:g}"] = ordered[rank - 1]
    out["max"] = ordered[-1]
    return out


async def paced_publish(
    settings: Settings, events: Sequence[LogEvent], rate: float
) -> tuple[dict[str, int], float]:
    """Publish ``events`` as live traffic (``ts`` and record timestamp = now) at ``rate``
    events/s; returns each event id's record timestamp and the achieved rate."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id="shopscore-bench-latency",
        linger_ms=0,
        acks=1,
        **settings.kafka_client_options(),
    )
    sent: dict[str, int] = {}
    pending: list[asyncio.Future[Any]] = []
    await producer.start()
    started = time.monotonic()
    try:
        for i, event in enumerate(events):
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0.001:
                await asyncio.sleep(ahead)
            obj = orjson.loads(event.payload)
            now_ms = int(time.time() * 1000)
            obj["ts"] = now_ms
            sent[obj["event_id"]] = now_ms
            pending.append(
                await producer.send(
                    settings.topic(TOPIC_OF_KIND[event.kind]),
                    value=orjson.dumps(obj),
                    key=event.key,
                    timestamp_ms=now_ms,
                )
            )
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        elapsed = time.monotonic() - started
    finally:
        await producer.stop()
    return sent, len(events) / max(elapsed, 1e-3)


def latency(
    settings: Settings,
    events: Sequence[LogEvent],
    rate: float,
    workdir: Path,
    progress: Progress,
) -> tuple[dict[str, Any], dict[str, float]]:
    """End-to-end latency at ``rate`` on a fresh worker; also the empty worker's ready time
    and RSS (the baseline the state phase scales above)."""
    worker = WorkerProcess(settings, log_path=Path(settings.data_dir).with_suffix(".log")).start()
    try:
        ready_s = worker.wait_ready(timeout=120)
        assert worker.proc is not None
        baseline = {"ready_s": round(ready_s, 2), "rss_mb": round(rss_mb(worker.proc.pid), 1)}
        sent, achieved = asyncio.run(paced_publish(settings, events, rate))
        poll_reached(
            lambda: read_worker_metrics(worker.url).consumed,
            len(events),
            worker.proc,
            "the worker",
            budget(len(events)),
        )
        expected = int(produced_by_topic(worker.url).get("scores.churn", 0))
        counts = read_worker_metrics(worker.url)
    finally:
        worker.stop()
    records = read_until(settings, settings.topic("scores.churn"), expected)
    latencies: list[float] = []
    for rec in records:
        trigger = orjson.loads(rec.value or b"{}").get("trigger")
        stamp = sent.get(trigger) if isinstance(trigger, str) else None
        if stamp is not None:
            latencies.append(float(rec.timestamp - stamp))
    if not latencies:
        raise ShopscoreError("no scores.churn record matched an event sent in the latency phase")
    figures: dict[str, Any] = {k: round(v, 1) for k, v in percentiles(latencies).items()}
    figures.update(
        mean=round(statistics.fmean(latencies), 2),
        rate_eps=round(achieved, 1),
        target_rate_eps=rate,
        events=len(events),
        scored_events=len(latencies),
        rejected=int(counts.rejected_total),
        resolution_ms=1,
    )
    progress(
        f"latency at {achieved:,.0f} events/s: p50 {figures['p50']:.0f} ms, "
        f"p99 {figures['p99']:.0f} ms, max {figures['max']:.0f} ms "
        f"({len(latencies):,} scored events)"
    )
    return figures, baseline
