"""A batch's output records produced as record batches, one per topic partition.

Faust's ``send_soon`` makes a future, a pending-message tuple and a coroutine hop per record,
and its buffer hands records to aiokafka one by one: a third of the worker's time when every
event yields four or five score records (``README``, "Benchmarks"). aiokafka's
``create_batch``/``send_batch`` take a whole partition's records at once, with one future per
batch.

Keyed records go to the partition Kafka's default partitioner picks (murmur2 of the key, as
aiokafka's and the Java client's), so a user's scores land where they would with ``send``;
an explicit partition (a re-keyed input) is kept; unkeyed ones (dead letters without a key)
are spread round-robin.

Durability is unchanged: every batch is in aiokafka's accumulator before ``send`` returns, and
the commit's producer flush (``stream.kafka.compat``) waits for all of them, so no input
offset is committed before its records are on the broker. A failed batch poisons the producer
like a failed single send, so nothing is committed past it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError

from stream.contract.partitioning import murmur2
from stream.pipeline.records import OutputRecord

__all__ = ["BatchSender"]

#: What a record adds to a produce request besides its key and value (batch header and record
#: framing, as aiokafka estimates it), for the ``max_request_size`` check.
_RECORD_OVERHEAD = 128


class BatchSender:
    """Sends ``OutputRecord``s through the app's producer as one record batch per partition."""

    def __init__(self, producer: Any, topic: Callable[[str], str]) -> None:
        self.producer = producer  # stream.kafka.compat._Producer
        self._topic = topic
        self._partitions: dict[str, int] = {}
        self._spread = itertools.count()

    async def _partition_count(self, client: Any, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            partitions = await client.partitions_for(topic)
            count = self._partitions[topic] = len(partitions)
        return count

    async def send(self, records: Iterable[OutputRecord]) -> int:
        """Produce ``records``; the number of record batches it took."""
        producer = self.producer
        producer.check()
        client = producer._ensure_producer()  # the aiokafka producer under Faust's
        limit = getattr(producer, "max_request_size", 1_048_576)
        by_partition: dict[tuple[str, int], list[OutputRecord]] = {}
        for record in records:
            topic = self._topic(record.topic)
            size = _RECORD_OVERHEAD + len(record.key or b"") + len(record.value)
            if size > limit:  # as aiokafka's own send refuses it
                self._refuse(f"a {size}-byte record is over max_request_size {limit}", topic, size)
            partition = record.partition
            if partition is None:
                count = await self._partition_count(client, topic)
                if record.key is None:
                    partition = next(self._spread) % count
                else:
                    partition = (murmur2(record.key) & 0x7FFFFFFF) % count
            by_partition.setdefault((topic, partition), []).append(record)
        sent = 0
        for (topic, partition), group in by_partition.items():
            batch = client.create_batch()
            size = 0
            for record in group:
                if batch.append(key=record.key, value=record.value, timestamp=None) is None:
                    if not batch.record_count():
                        self._refuse(
                            f"a record of {len(record.value)} bytes exceeds the batch size",
                            topic,
                            len(record.value),
                        )
                    await self._submit(client, batch, topic, partition, size)
                    sent += 1
                    batch, size = client.create_batch(), 0
                    batch.append(key=record.key, value=record.value, timestamp=None)
                size += len(record.key or b"") + len(record.value)
            await self._submit(client, batch, topic, partition, size)
            sent += 1
        return sent

    def _refuse(self, why: str, topic: str, size: int) -> None:
        """A record that can never be produced poisons the producer and raises: nothing may be
        committed past its input (``stream.kafka.compat._Producer``)."""
        self.producer._poison(MessageSizeTooLargeError(why), topic, size)
        self.producer.check()

    async def _submit(self, client: Any, batch: Any, topic: str, partition: int, size: int) -> None:
        producer = self.producer
        try:
            future = await client.send_batch(batch, topic, partition=partition)
        except Exception as exc:
            producer._poison(exc, topic, size)
            raise
        future.add_done_callback(lambda done: producer._delivered(done, topic, size))
