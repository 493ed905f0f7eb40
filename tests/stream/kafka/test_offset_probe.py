"""The offset probes ask the real broker where a partition's records are.

``first_offsets`` tells a message lost on its way to the agent (read again) from offsets the
broker does not hold (accepted as a gap); ``true_end_offsets`` corrects the embedded broker's
ListOffsets, short of the end after a batched produce, and is a no-op on Apache Kafka. Both are
checked against both brokers themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from stream.kafka.compat import first_offsets, true_end_offsets
from stream.settings import Settings

pytestmark = [pytest.mark.broker, pytest.mark.both_brokers]

RECORDS = 7


async def _probe(
    settings: Settings, wanted: dict[int, int], key: Callable[[str, int], Any] = TopicPartition
) -> dict[int, int]:
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
        found = await first_offsets(consumer, {key(topic, 0): offset for offset in wanted.values()})
        return {offset: found[key(topic, 0)] for offset in wanted.values()}
    finally:
        await consumer.stop()


@pytest.mark.parametrize("offset", [0, 3, RECORDS - 1])
def test_an_offset_the_broker_holds_is_its_own_first_offset(settings: Settings, offset) -> None:
    assert asyncio.run(_probe(settings, {0: offset})) == {offset: offset}


def test_partitions_named_as_in_fausts_assignment_are_probed(settings: Settings) -> None:
    # The lost-tail check probes partitions from Faust's assignment, whose TP type aiokafka's
    # getmany refuses (it failed every probe after a broker outage).
    assert asyncio.run(_probe(settings, {0: 3}, key=TP)) == {3: 3}


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


def test_apache_kafka_answers_a_waiting_fetch_when_data_arrives(kafka) -> None:
    """The embedded broker answers a fetch only when its wait ends, which is why the worker
    waits at most ``FETCH_MAX_WAIT_MS`` (50 ms) per fetch; Apache Kafka answers as soon as
    ``fetch.min.bytes`` (1) arrive, so there that cap bounds no latency: with a 5 s wait, a
    record produced while the fetch waits is delivered at once."""
    import time

    servers = kafka.url.removeprefix("kafka://")
    tp = TopicPartition("fetch-wait-probe", 0)

    async def delay() -> float:
        producer = AIOKafkaProducer(bootstrap_servers=servers)
        await producer.start()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=servers, group_id=None, fetch_max_wait_ms=5_000
        )
        await consumer.start()
        try:
            await producer.send_and_wait(tp.topic, b"first", partition=0)
            consumer.assign([tp])
            await consumer.seek_to_end(tp)
            await consumer.getmany(tp, timeout_ms=1_000)  # the next fetch is now waiting
            reading = asyncio.ensure_future(consumer.getone(tp))
            await asyncio.sleep(0.5)
            await producer.send_and_wait(tp.topic, b"second", partition=0)
            sent = time.monotonic()
            record = await asyncio.wait_for(reading, 15)
            assert record.value == b"second"
            return time.monotonic() - sent
        finally:
            await consumer.stop()
            await producer.stop()

    # ~0.01 s here; the embedded broker takes 1.0 s in the same steps.
    assert asyncio.run(delay()) < 0.5
