"""A producer flush (what Faust awaits before committing offsets) leaves nothing pending.

Faust's own buffer flush returns after 0.1 s without a message sent, so on a slow broker it
returned with table writes still buffered and the commit that followed could outrun them: a
``kill -9`` then lost those writes (``stream.kafka.compat``, "Flush before commit").
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest

from stream.kafka.compat import install
from stream.settings import Settings
from stream.tools.dump import dump_topic

pytestmark = pytest.mark.broker

MESSAGES = 6
SEND_DELAY_S = 0.25  # each hand-over to the client takes longer than Faust's 0.1 s patience


async def _produce_and_flush(settings: Settings, topic_name: str) -> tuple[int, list[Any]]:
    install()
    app = faust.App(settings.app_id, broker=settings.broker)
    producer = app.producer
    send = producer.send

    async def slow_send(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(SEND_DELAY_S)  # a slow broker, as under a heavy backlog
        return await send(*args, **kwargs)

    producer.send = slow_send  # type: ignore[method-assign]
    await producer.start()
    try:
        topic = app.topic(topic_name, key_type=bytes, value_type=bytes, partitions=1)
        await producer.create_topic(topic_name, partitions=1, replication=1)
        for i in range(MESSAGES):
            topic.send_soon(key=b"k", value=str(i).encode())
        await producer.flush()
        # Read back before stopping the producer (stopping flushes too): what the flush alone
        # delivered.
        return producer.buffer.size, await dump_topic(settings, "flush-check")
    finally:
        await producer.stop()


def test_flush_returns_only_when_every_message_is_on_the_broker(settings: Settings) -> None:
    left, records = asyncio.run(_produce_and_flush(settings, settings.topic("flush-check")))
    assert left == 0
    assert [r["value"] for r in records] == list(range(MESSAGES))
