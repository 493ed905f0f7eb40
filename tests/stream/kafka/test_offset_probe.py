"""The offset probe asks the real broker where a partition's records are (``first_offsets``).

It is what tells a message lost on its way to the agent (read again) from offsets the broker
does not hold (accepted as a gap), so it is checked against the embedded broker itself.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.kafka.compat import first_offsets
from stream.settings import Settings

pytestmark = pytest.mark.broker

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
