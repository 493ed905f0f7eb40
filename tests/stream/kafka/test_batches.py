"""Record batches land where single sends would, and a flush waits for them.

The worker produces a batch's records as one record batch per partition
(``stream.kafka.batches``); a user's scores must still go to the partition Kafka's default
partitioner gives their key, re-keyed inputs to their explicit partition, and the producer
flush that precedes every commit must not return before the batches are on the broker.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP

from stream.kafka.batches import BatchSender, ChangelogRecord
from stream.kafka.compat import install
from stream.pipeline.records import OutputRecord
from stream.settings import Settings
from stream.tools.dump import dump_topic

pytestmark = pytest.mark.broker

PARTITIONS = 4


async def _send(settings: Settings, records: list[OutputRecord]) -> tuple[int, dict[str, Any]]:
    install()
    app = faust.App(settings.app_id, broker=settings.broker, producer_max_batch_size=4096)
    producer = app.producer
    await producer.start()
    try:
        for name in ("scores.churn", "clicks", "events.dlq"):
            await producer.create_topic(settings.topic(name), partitions=PARTITIONS, replication=1)
        batches = await BatchSender(producer, settings.topic).send(records)
        await producer.flush()  # what every commit awaits first
        read = {
            name: await dump_topic(settings, name)
            for name in ("scores.churn", "clicks", "events.dlq")
        }
        return batches, read
    finally:
        await producer.stop()


def test_records_go_out_in_batches_to_the_partitions_single_sends_would_use(settings) -> None:
    scores = [
        OutputRecord("scores.churn", f"u{i}".encode(), orjson.dumps({"i": i, "pad": "x" * 200}))
        for i in range(60)
    ]
    rekeyed = [OutputRecord("clicks", b"u7", b'{"event_id": "e"}', 3)]
    unkeyed = [OutputRecord("events.dlq", None, orjson.dumps({"n": n})) for n in range(8)]
    batches, read = asyncio.run(_send(settings, [*scores, *rekeyed, *unkeyed]))
    partitioner = DefaultPartitioner()
    everyone = list(range(PARTITIONS))
    placed = {rec["key"]: rec["partition"] for rec in read["scores.churn"]}
    assert placed == {f"u{i}": partitioner(f"u{i}".encode(), everyone, everyone) for i in range(60)}
    # Per partition, in the order they were handed over.
    for partition in everyone:
        order = [rec["value"]["i"] for rec in read["scores.churn"] if rec["partition"] == partition]
        assert order == sorted(order)
    assert [(rec["key"], rec["partition"]) for rec in read["clicks"]] == [("u7", 3)]
    assert sorted(rec["value"]["n"] for rec in read["events.dlq"]) == list(range(8))
    assert len({rec["partition"] for rec in read["events.dlq"]}) == PARTITIONS  # spread
    # 60 records of ~230 bytes over 4 partitions, 4 KiB batches: a few batches each, not 60.
    assert PARTITIONS + 1 + PARTITIONS <= batches < 30


async def _send_changelog(
    settings: Settings, records: list[ChangelogRecord]
) -> tuple[list[tuple[str, TP, int]], list[Any]]:
    install()
    app = faust.App(settings.app_id, broker=settings.broker, producer_max_batch_size=4096)
    producer = app.producer
    await producer.start()
    topic = records[0].topic
    persisted: list[tuple[str, TP, int]] = []
    try:
        await producer.create_topic(topic, partitions=PARTITIONS, replication=1)
        await BatchSender(producer, settings.topic).send_changelog(
            records, lambda table, tp, offset: persisted.append((table, tp, offset))
        )
        await producer.flush()
        await asyncio.sleep(0)  # the batches' done callbacks run
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker.removeprefix("kafka://"))
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            read: list[Any] = []
            while len(read) < len(records):
                batch = await consumer.getmany(timeout_ms=1000)
                read += [rec for recs in batch.values() for rec in recs]
        finally:
            await consumer.stop()
        return persisted, read
    finally:
        await producer.stop()


def test_changelog_records_go_to_their_partition_and_report_the_last_offset(settings) -> None:
    """Table writes go out as record batches too (``stream.kafka.changelog``): each to the
    partition it names, tombstones as null values, and the last offset of each partition is
    reported once it is on the broker (a RocksDB table's persisted offset follows it)."""
    topic = f"{settings.app_id}-users-changelog"
    records = [
        ChangelogRecord(topic, i % PARTITIONS, f"u{i}".encode(), b"x" * 300, "users")
        for i in range(40)
    ]
    records.append(ChangelogRecord(topic, 2, b"gone", None, "users"))
    persisted, read = asyncio.run(_send_changelog(settings, records))
    assert sorted((r.partition, r.key, r.value) for r in read) == sorted(
        (r.partition, r.key, r.value) for r in records
    )
    last = {}
    for table, tp, offset in persisted:
        assert table == "users" and tp.topic == topic
        last[tp.partition] = max(offset, last.get(tp.partition, -1))
    per_partition = {p: sum(r.partition == p for r in records) for p in range(PARTITIONS)}
    assert last == {p: n - 1 for p, n in per_partition.items()}
