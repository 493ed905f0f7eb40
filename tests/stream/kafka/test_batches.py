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
from aiokafka.partitioner import DefaultPartitioner

from stream.kafka.batches import BatchSender
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
