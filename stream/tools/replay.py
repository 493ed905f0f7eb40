"""Publishing event logs to the input topics in event-time order, and advancing the clock.

A log line is one JSON object with ``type`` (``click``/``cart``/``order``); it is published,
without ``type``, to that kind's topic keyed by ``user_id``. Lines are sorted by ``ts``; a line
whose ``ts`` cannot be parsed keeps its place after the previous line, so the worker still sees
(and dead-letters) it. Lines that are not JSON objects with a known ``type`` cannot be routed
to a topic: they are counted as ``skipped`` and reported, never silently dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from stream.contract.events import TOPIC_OF_KIND
from stream.contract.validation import decode_clock, parse_ts
from stream.errors import BrokerError, ConfigError, Rejected
from stream.kafka.admin import CLOCK, check_reachable, ensure_topics
from stream.settings import Settings

__all__ = [
    "LogEvent",
    "ReplaySummary",
    "check_clock_time",
    "iter_generated",
    "publish",
    "publish_clock",
    "read_log",
]


@dataclass(frozen=True, slots=True)
class LogEvent:
    """A routable log line: its sort time, kind, key and payload (without ``type``)."""

    ts: int
    kind: str
    key: bytes | None
    payload: bytes


@dataclass
class ReplaySummary:
    published: int = 0
    per_topic: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    beyond_until: int = 0
    seconds: float = 0.0
    first_ts: int | None = None
    last_ts: int | None = None
    clock_ts: int | None = None

    def as_dict(self) -> dict[str, Any]:
        rate = self.published / self.seconds if self.seconds > 0 else None
        return {
            "published": self.published,
            "per_topic": dict(self.per_topic),
            "skipped": self.skipped,
            "beyond_until": self.beyond_until,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(rate, 1) if rate else None,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "clock_ts": self.clock_ts,
        }


def read_log(path: str | Path, summary: ReplaySummary | None = None) -> list[LogEvent]:
    """Read a JSONL log into routable events sorted by event time (stable for ties)."""
    summary = summary if summary is not None else ReplaySummary()
    rows: list[tuple[int, int, LogEvent]] = []
    last_ts = 0
    with open(path, "rb") as fh:
        for seq, line in enumerate(fh):
            if not line.strip():
                continue
            event = _route(line)
            if event is None:
                summary.skipped += 1
                continue
            if event.ts is None:
                ts = last_ts
            else:
                ts = last_ts = event.ts
            rows.append((ts, seq, LogEvent(ts, event.kind, event.key, event.payload)))
    rows.sort(key=lambda row: (row[0], row[1]))
    return [row[2] for row in rows]


@dataclass(slots=True)
class _Routed:
    ts: int | None
    kind: str
    key: bytes | None
    payload: bytes


def _route(line: bytes) -> _Routed | None:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    kind = obj.pop("type", None)
    if kind not in TOPIC_OF_KIND:
        return None
    try:
        ts: int | None = parse_ts(obj.get("ts"))
    except Rejected:
        ts = None
    user = obj.get("user_id")
    key = (
        str(user).encode() if isinstance(user, (str, int)) and not isinstance(user, bool) else None
    )
    return _Routed(ts, kind, key, orjson.dumps(obj))


async def publish(
    settings: Settings,
    events: Iterable[LogEvent],
    *,
    until_ms: int | None = None,
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
    summary: ReplaySummary | None = None,
    stop: asyncio.Event | None = None,
) -> ReplaySummary:
    """Publish ``events`` (already in event-time order) keyed by user; optionally paced at
    ``rate`` events/s; events after ``until_ms`` are not sent. Then, with ``until_ms``, advance
    the clock to it. ``stop`` ends publishing early (Ctrl-C in ``run``)."""
    summary = summary if summary is not None else ReplaySummary()
    if until_ms is not None:
        check_clock_time(settings, until_ms)
    await ensure_topics(settings)
    producer = _producer(settings)
    await producer.start()
    started = time.monotonic()
    # Event-time barrier: a replay squeezes days into seconds, so a few milliseconds of
    # batching skew between partitions would be hours of event time. Before publishing past
    # half the allowed lateness, everything earlier is acknowledged by the broker; a worker
    # that keeps pace then never sees one partition further ahead than that.
    barrier_step = max(1, settings.allowed_lateness_ms // 2)
    barrier: int | None = None
    try:
        pending: list[asyncio.Future[Any]] = []
        for event in events:
            if stop is not None and stop.is_set():
                break
            if until_ms is not None and event.ts > until_ms:
                summary.beyond_until += 1
                continue
            if barrier is None:
                barrier = event.ts
            elif event.ts > barrier + barrier_step:
                if pending:
                    await asyncio.gather(*pending)
                    pending.clear()
                barrier = event.ts
            topic = TOPIC_OF_KIND[event.kind]
            pending.append(
                await producer.send(settings.topic(topic), value=event.payload, key=event.key)
            )
            summary.published += 1
            summary.per_topic[topic] += 1
            if summary.first_ts is None:
                summary.first_ts = event.ts
            summary.last_ts = event.ts
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
                if progress:
                    progress(summary.published)
            if rate:
                ahead = summary.published / rate - (time.monotonic() - started)
                if ahead > 0.005:
                    await asyncio.sleep(ahead)
        if pending:
            await asyncio.gather(*pending)
        await producer.flush()
        if progress:
            progress(summary.published)
        if until_ms is not None:
            await _send_clock(producer, settings, until_ms)
            summary.clock_ts = until_ms
    except KafkaError as exc:
        raise BrokerError(f"publishing to {settings.broker} failed: {exc}") from exc
    finally:
        summary.seconds = time.monotonic() - started
        await producer.stop()
    return summary


async def publish_clock(settings: Settings, ts_ms: int) -> None:
    """Advance event time to ``ts_ms`` on every partition (idle users get re-scored)."""
    check_clock_time(settings, ts_ms)
    await ensure_topics(settings)
    producer = _producer(settings)
    await producer.start()
    try:
        await _send_clock(producer, settings, ts_ms)
    finally:
        await producer.stop()


def check_clock_time(settings: Settings, ts_ms: int, now_ms: int | None = None) -> None:
    """Refuse, up front, a clock time the workers would dead-letter (docs/contracts.md,
    "Clock"): before ``min_ts_ms`` or more than ``max_future_ms`` ahead of now. A
    ``ConfigError``: one line."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        decode_clock(orjson.dumps({"ts": ts_ms}), now_ms=now_ms, limits=settings.limits)
    except Rejected as exc:
        hint = (
            f"; the clock may be at most SHOPSCORE_MAX_FUTURE "
            f"({settings.limits.max_future_ms} ms) ahead of now"
            if exc.reason == "future_timestamp"
            else ""
        )
        raise ConfigError(
            f"--until {ts_ms}: the workers would refuse this clock time "
            f"({exc.reason}: {exc.detail}){hint}"
        ) from None


async def _send_clock(producer: AIOKafkaProducer, settings: Settings, ts_ms: int) -> None:
    topic = settings.topic(CLOCK)
    partitions = await producer.partitions_for(topic)
    value = orjson.dumps({"ts": ts_ms, "source": "replay"})
    futures = [await producer.send(topic, value=value, partition=p) for p in sorted(partitions)]
    await asyncio.gather(*futures)


def _producer(settings: Settings) -> AIOKafkaProducer:
    check_reachable(settings)
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id="shopscore-replay",
        linger_ms=0,
        max_batch_size=256 * 1024,
        acks=1,
        **settings.kafka_client_options(),
    )


def iter_generated(events: Iterable[dict[str, Any]]) -> Iterator[LogEvent]:
    """Route generator output (dicts with ``type``) like log lines, keeping their order."""
    for obj in events:
        routed = _route(orjson.dumps(obj))
        if routed is not None:
            yield LogEvent(routed.ts or 0, routed.kind, routed.key, routed.payload)
