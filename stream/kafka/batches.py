"""A batch's output records produced as record batches, one per topic partition.

Faust's ``send_soon`` makes a future, a pending-message tuple and a coroutine hop per record,
and its buffer hands records to aiokafka one by one: a third of the worker's time when every
event yields four or five score records (``docs/benchmarks.md``, "Benchmarks"). aiokafka's
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

Exactly-once (``processing_guarantee="exactly_once"``): Faust keeps one transactional producer
per input partition and commits that partition's input offsets in its transaction. Each record
here carries the input partition it came from (``OutputRecord.source``, a changelog record's
partition), and goes out through that partition's transactional producer, under Faust's lock
for that transaction, so outputs, changelog writes and offsets commit (or abort) together.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from aiokafka.errors import MessageSizeTooLargeError
from faust.types import TP

from stream.contract.partitioning import murmur2
from stream.pipeline.records import OutputRecord

__all__ = ["BatchSender", "ChangelogRecord", "OnPersisted"]

log = logging.getLogger("shopscore")

#: What a record adds to a produce request besides its key and value (batch header and record
#: framing, as aiokafka estimates it), for the ``max_request_size`` check.
_RECORD_OVERHEAD = 128


class ChangelogRecord(NamedTuple):
    """A table's changelog record: ``topic`` is the changelog topic's full name, ``value`` None
    a tombstone, ``table`` the table's name (for its persisted offset)."""

    topic: str
    partition: int
    key: bytes
    value: bytes | None
    table: str


#: Records to send: by source partition (None unless exactly-once), then by topic partition.
_Groups = dict[int | None, dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]]]

#: ``on_persisted(table, tp, offset)``: ``offset`` of ``table``'s changelog ``tp`` is on the
#: broker.
OnPersisted = Callable[[str, TP, int], None]


class BatchSender:
    """Sends ``OutputRecord``s through the app's producer as one record batch per partition."""

    def __init__(
        self,
        producer: Any,
        topic: Callable[[str], str],
        transactional_id: Callable[[int], str] | None = None,
    ) -> None:
        self.producer = producer  # stream.kafka.compat._Producer
        self._topic = topic
        #: Exactly-once: the transactional id of an input partition's transaction.
        self._transactional_id = transactional_id
        self._partitions: dict[str, int] = {}
        self._spread = itertools.count()

    async def _partition_count(self, client: Any, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            partitions = await client.partitions_for(topic)
            count = self._partitions[topic] = len(partitions)
        return count

    def _client(self) -> tuple[Any, int]:
        producer = self.producer
        producer.check()
        client = producer._ensure_producer()  # the aiokafka producer under Faust's
        return client, getattr(producer, "max_request_size", 1_048_576)

    def _check_size(self, topic: str, key: bytes | None, value: bytes | None, limit: int) -> None:
        size = _RECORD_OVERHEAD + len(key or b"") + len(value or b"")
        if size > limit:  # as aiokafka's own send refuses it
            self._refuse(f"a {size}-byte record is over max_request_size {limit}", topic, size)

    def _source(self, source: int | None) -> int | None:
        """What a record is grouped by before its partition: its source partition with
        exactly-once (one transaction each), else None (one group)."""
        if self._transactional_id is None:
            return None
        if source is None:
            raise ValueError("exactly-once: a record without its source partition")
        return source

    async def send(self, records: Iterable[OutputRecord]) -> int:
        """Produce ``records``; the number of record batches it took."""
        client, limit = self._client()
        groups: _Groups = {}
        for record in records:
            topic = self._topic(record.topic)
            self._check_size(topic, record.key, record.value, limit)
            partition = record.partition
            if partition is None:
                count = await self._partition_count(client, topic)
                if record.key is None:
                    partition = next(self._spread) % count
                else:
                    partition = (murmur2(record.key) & 0x7FFFFFFF) % count
            by_partition = groups.setdefault(self._source(record.source), {})
            by_partition.setdefault((topic, partition), []).append((record.key, record.value))
        return await self._send_grouped(client, groups, None)

    async def send_changelog(
        self, records: Iterable[ChangelogRecord], on_persisted: OnPersisted
    ) -> int:
        """Produce table changelog records (each to its explicit partition); ``on_persisted``
        learns each partition's last offset once its batch is on the broker."""
        client, limit = self._client()
        groups: _Groups = {}
        tables: dict[str, str] = {}
        for record in records:
            self._check_size(record.topic, record.key, record.value, limit)
            tables[record.topic] = record.table
            by_partition = groups.setdefault(self._source(record.partition), {})
            by_partition.setdefault((record.topic, record.partition), []).append(
                (record.key, record.value)
            )

        def persisted(topic: str, partition: int, done: asyncio.Future[Any], n: int) -> None:
            if not done.cancelled() and done.exception() is None:
                on_persisted(tables[topic], TP(topic, partition), done.result().offset + n - 1)

        return await self._send_grouped(client, groups, persisted)

    async def _send_grouped(
        self,
        client: Any,
        groups: _Groups,
        on_done: Callable[[str, int, asyncio.Future[Any], int], None] | None,
    ) -> int:
        sent = 0
        for source, by_partition in groups.items():
            if source is None:
                sent += await self._send_batches(client, by_partition, on_done)
                continue
            assert self._transactional_id is not None  # a source is kept only then
            transaction = self._transactional_id(source)
            producer = self.producer
            # Faust's lock for this transaction: its commit (offsets, end, begin) never runs
            # between the batches sent here.
            async with producer._trn_locks[transaction]:
                txn_client = producer._transaction_producers.get(transaction)
                if txn_client is None:
                    # Its partition was revoked meanwhile: the transaction is fenced, and the
                    # new owner reads the uncommitted inputs again and produces these anew.
                    log.info(
                        "dropping %d record batches of revoked %s", len(by_partition), transaction
                    )
                    continue
                sent += await self._send_batches(txn_client, by_partition, on_done)
        return sent

    async def _send_batches(
        self,
        client: Any,
        by_partition: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]],
        on_done: Callable[[str, int, asyncio.Future[Any], int], None] | None,
    ) -> int:
        sent = 0
        for (topic, partition), group in by_partition.items():
            batch = client.create_batch()
            size = n = 0
            for key, value in group:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    if not n:
                        self._refuse(
                            f"a record of {len(value or b'')} bytes exceeds the batch size",
                            topic,
                            len(value or b""),
                        )
                    await self._submit(client, batch, topic, partition, size, n, on_done)
                    sent += 1
                    batch, size, n = client.create_batch(), 0, 0
                    batch.append(key=key, value=value, timestamp=None)
                size += len(key or b"") + len(value or b"")
                n += 1
            await self._submit(client, batch, topic, partition, size, n, on_done)
            sent += 1
        return sent

    def _refuse(self, why: str, topic: str, size: int) -> None:
        """A record that can never be produced poisons the producer and raises: nothing may be
        committed past its input (``stream.kafka.compat._Producer``)."""
        self.producer._poison(MessageSizeTooLargeError(why), topic, size)
        self.producer.check()

    async def _submit(
        self,
        client: Any,
        batch: Any,
        topic: str,
        partition: int,
        size: int,
        n: int,
        on_done: Callable[[str, int, asyncio.Future[Any], int], None] | None,
    ) -> None:
        producer = self.producer
        try:
            future = await client.send_batch(batch, topic, partition=partition)
        except Exception as exc:
            producer._poison(exc, topic, size)
            raise
        future.add_done_callback(lambda done: producer._delivered(done, topic, size))
        if on_done is not None:
            future.add_done_callback(lambda done: on_done(topic, partition, done, n))
