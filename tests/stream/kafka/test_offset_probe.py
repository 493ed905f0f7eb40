"""The offset probes ask the real broker where a partition's records are.

``first_offsets`` tells a message lost on its way to the agent (read again) from offsets the
broker does not hold (accepted as a gap); ``true_end_offsets`` corrects the embedded broker's
ListOffsets, short of the end after a batched produce, and is a no-op on Apache Kafka. Both are
checked against both brokers themselves.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.kafka.compat import first_offsets, true_end_offsets
from stream.settings import Settings

pytestmark = [pytest.mark.broker, pytest.mark.both_brokers]

RECORDS = 7


async def _probe(settings: Settings, wanted: dict[int, int]) -> dict[int, int]:
    servers = settings.broker.removeprefix("kafka://")
    topic = settings.topic("probe")
    producer = AIOKafkaProducer(bootstrap_servers=servers)
    await producer.start()
    try:
        for i in range(RECORDS):
            await producer.send_and_wait(topic, str(i).encode(), partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=None)
    await consumer.start()
    try:
        found = await first_offsets(
            consumer, {TopicPartition(topic, 0): offset for offset in wanted.values()}
        )
        return {offset: found[TopicPartition(topic, 0)] for offset in wanted.values()}
    finally:
        await consumer.stop()


@pytest.mark.parametrize("offset", [0, 3, RECORDS - 1])
def test_an_offset_the_broker_holds_is_its_own_first_offset(settings: Settings, offset) -> None:
    assert asyncio.run(_probe(settings, {0: offset})) == {offset: offset}


def test_past_the_last_record_the_first_offset_is_the_end(settings: Settings) -> None:
    assert asyncio.run(_probe(settings, {0: RECORDS + 3})) == {RECORDS + 3: RECORDS}


def test_end_offsets_after_a_batched_produce_are_the_true_end(
    settings: Settings, broker_kind: str
) -> None:
    """Records produced in one record batch: the corrected end is past the last record on
    either broker; Kafka's own ListOffsets already says so (the correction changes nothing
    there), the embedded broker's says the batch's base offset plus one."""
    servers = settings.broker.removeprefix("kafka://")
    tp = TopicPartition(settings.topic("ends"), 0)

    async def ends() -> tuple[int, int]:
        producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=50)
        await producer.start()
        try:
            sent = [await producer.send(tp.topic, b"x", partition=0) for _ in range(RECORDS)]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=None)
        await consumer.start()
        try:
            listed = (await consumer.end_offsets([tp]))[tp]
            return listed, (await true_end_offsets(consumer, [tp]))[tp]
        finally:
            await consumer.stop()

    listed, corrected = asyncio.run(ends())
    assert corrected == RECORDS
    if broker_kind == "kafka":
        assert listed == RECORDS
    else:
        assert listed == 1  # Tansu: the last batch's base offset (0) plus one
