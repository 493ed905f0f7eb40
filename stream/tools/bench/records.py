"""Reading topics back with their Kafka timestamps, and creating the bench's own topics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from stream.errors import BrokerError
from stream.kafka.admin import ensure_topics
from stream.kafka.compat import topic_partitions
from stream.settings import Settings

__all__ = [
    "Record",
    "create_topics",
    "iter_records",
    "latest_values",
    "read_records",
    "read_until",
]


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes | None
    value: bytes | None
    timestamp: int  # ms: the producer's create time (or the broker's append time)
    partition: int


async def iter_records(
    settings: Settings, topic: str, *, idle_s: float = 5.0
) -> AsyncIterator[Record]:
    """Every record of physical ``topic`` up to its end as of the first fetch of each partition.

    The end is the larger of ListOffsets and a fetch's high watermark: the embedded Tansu
    broker answers ListOffsets short of the true end (see ``stream.tools.dump``).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id="shopscore-bench",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 2**20,
        **settings.kafka_client_options(),
    )
    try:
        await consumer.start()
        partitions = await topic_partitions(consumer, topic)
        if not partitions:
            return
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        listed = await consumer.end_offsets(tps)
        ends: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + idle_s
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=300, max_records=20_000)
            for tp in tps:
                highwater = consumer.highwater(tp)
                if tp not in ends and (highwater is not None or time.monotonic() > deadline):
                    ends[tp] = max(highwater or 0, listed[tp])
            for tp, records in batch.items():
                for rec in records:
                    if tp not in ends or rec.offset < ends[tp]:
                        yield Record(rec.key, rec.value, rec.timestamp, rec.partition)
            if len(ends) == len(tps):
                positions = [await consumer.position(tp) for tp in tps]
                if all(p >= ends[tp] for p, tp in zip(positions, tps, strict=True)):
                    break
    except KafkaError as exc:
        raise BrokerError(f"reading {topic!r} failed: {exc}") from exc
    finally:
        await consumer.stop()


async def read_records(settings: Settings, topic: str) -> list[Record]:
    return [rec async for rec in iter_records(settings, topic)]


async def latest_values(settings: Settings, topic: str) -> dict[bytes, bytes]:
    """The last value of every key (a changelog's current content)."""
    out: dict[bytes, bytes] = {}
    async for rec in iter_records(settings, topic):
        if rec.key is not None and rec.value is not None:
            out[rec.key] = rec.value
    return out


def read_until(
    settings: Settings, topic: str, expected: int, timeout: float = 60.0
) -> list[Record]:
    """Read ``topic`` again until it holds at least ``expected`` records (producers flush
    asynchronously: a count the worker reports may reach the broker a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        records = asyncio.run(read_records(settings, topic))
        if len(records) >= expected or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


async def create_topics(settings: Settings, names: Iterable[str]) -> None:
    """Create physical topics with ``settings.partitions`` partitions where missing."""
    await ensure_topics(settings, (), physical=tuple(names))
