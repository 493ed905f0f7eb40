"""Reading a topic to its current end as JSON lines (``shopscore dump``).

Each line is ``{"key", "value", "partition", "offset"}``; a value that is JSON is embedded as
JSON, other UTF-8 as a string, anything else as ``{"base64": ...}``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from stream.errors import BrokerError
from stream.kafka.admin import check_reachable
from stream.kafka.compat import topic_partitions
from stream.settings import Settings

__all__ = ["decode_value", "dump_topic", "read_topic"]


def decode_value(raw: bytes | None) -> Any:
    """JSON if it parses, else text, else base64 (so any payload survives a dump)."""
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode("ascii")}


async def read_topic(settings: Settings, topic: str) -> AsyncIterator[dict[str, Any]]:
    """Yield every record of ``topic`` (physical name) up to the end offsets seen at the start."""
    check_reachable(settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id="shopscore-dump",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **settings.kafka_client_options(),
    )
    try:
        await consumer.start()
        partitions = await topic_partitions(consumer, topic)
        if not partitions:
            raise BrokerError(f"topic {topic!r} does not exist on {settings.broker}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        listed = await consumer.end_offsets(tps)
        ends: dict[TopicPartition, int] = {}
        deadline = asyncio.get_running_loop().time() + 5.0
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=500, max_records=5000)
            _snapshot_ends(consumer, tps, listed, ends, deadline)
            for tp, records in batch.items():
                for rec in records:
                    if tp in ends and rec.offset >= ends[tp]:
                        continue
                    yield {
                        "key": rec.key.decode("utf-8", "replace") if rec.key is not None else None,
                        "value": decode_value(rec.value),
                        "partition": rec.partition,
                        "offset": rec.offset,
                    }
            positions = [await consumer.position(tp) for tp in tps]
            if len(ends) == len(tps) and all(
                p >= ends[tp] for p, tp in zip(positions, tps, strict=True)
            ):
                break
    except KafkaError as exc:
        raise BrokerError(f"reading {topic!r} from {settings.broker} failed: {exc}") from exc
    finally:
        await consumer.stop()


def _snapshot_ends(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    listed: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    deadline: float,
) -> None:
    """Fix each partition's "current end" the first time a fetch reports its high watermark.

    ListOffsets alone is not trusted: the embedded Tansu broker answers it with the base offset
    of the partition's last record batch, which is short of the true end. A fetch response's
    high watermark is right on every broker, so the end is the larger of the two.
    """
    timed_out = asyncio.get_running_loop().time() > deadline
    for tp in tps:
        if tp in ends:
            continue
        highwater = consumer.highwater(tp)
        if highwater is not None:
            ends[tp] = max(highwater, listed[tp])
        elif timed_out:
            ends[tp] = listed[tp]


async def dump_topic(
    settings: Settings, topic: str, *, latest_per_key: bool = False
) -> list[dict[str, Any]]:
    """All records of contract topic ``topic``; with ``latest_per_key`` only each key's last."""
    records = [rec async for rec in read_topic(settings, settings.topic(topic))]
    if not latest_per_key:
        return records
    latest: dict[Any, dict[str, Any]] = {}
    for rec in records:
        latest.pop(rec["key"], None)
        latest[rec["key"]] = rec
    return list(latest.values())
