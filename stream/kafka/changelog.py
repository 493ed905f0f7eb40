"""A batch's table writes: into the tables' stores, and onto their changelogs as record batches.

``table[key] = value`` costs Faust a ``send_soon`` per key (a future, a pending-message tuple,
a trip through its producer buffer that hands records to aiokafka one by one) and a
Prometheus ``.labels()`` call in its sensor: about a tenth of the worker's time with two writes
per scored user (``docs/benchmarks.md``, "Benchmarks"). The worker writes a whole batch at
once: each value goes into the table's store exactly as ``__setitem__`` would put it, and the
changelog records go out through ``BatchSender`` as one record batch per changelog partition,
encoded with the table's own codec. Recovery reads them as it reads Faust's own writes.

What Faust does besides, this keeps: the store write is attributed to the key's partition
(``acting_as``: the RocksDB store picks its partition database from the current event), and
once a record batch is on the broker the partition's persisted offset is set to its last
offset (``Collection._on_changelog_sent``), so a RocksDB table restarts from the changelog's
tail. Durability is the output records': the commit's producer flush waits for the batches.

Tables given a ``DecodedTable`` (``stream.worker.state_cache``: ``users``, ``scores``) hold
the changelog bytes themselves, each value encoded once for both, and the decoded object goes
to the cache.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from faust.serializers import codecs
from faust.types import TP

from stream.kafka.batches import BatchSender, ChangelogRecord
from stream.pipeline.records import TableWrite
from stream.pipeline.stores import Packed

__all__ = ["ChangelogWriter", "Remembers"]


class Remembers(Protocol):
    """A cache of a table's decoded values (``stream.worker.state_cache.DecodedTable``)."""

    def remember(self, key: bytes, value: Any) -> None: ...


class ChangelogWriter:
    """Applies ``TableWrite``s to Faust tables without a per-key send."""

    def __init__(
        self, tables: Mapping[str, Any], decoded: Mapping[str, Remembers] | None = None
    ) -> None:
        self._tables = dict(tables)
        #: Tables that hold encoded bytes, and the cache of their decoded values.
        self._decoded = dict(decoded or {})
        self._topics = {name: t.changelog_topic.get_topic_name() for name, t in tables.items()}
        self._serializers = {name: t.value_serializer for name, t in tables.items()}
        #: Table name -> number of keys set and deleted, since the last ``take_counts``.
        self._counts: Counter[tuple[str, str]] = Counter()

    def _encode(self, table: str, value: Any) -> bytes | None:
        if value is None:
            return None  # a tombstone
        if isinstance(value, Packed):
            return value.data
        serializer = self._serializers[table]
        if serializer in (None, "raw") and isinstance(value, bytes):
            return value
        return codecs.dumps(serializer, value)

    def write(
        self,
        writes: Sequence[TableWrite],
        acting_as: Callable[[int], Any],
    ) -> list[ChangelogRecord]:
        """Put ``writes`` into the stores (each under ``acting_as(partition)``) and return the
        changelog records to send (``send``)."""
        by_partition: dict[int, list[TableWrite]] = {}
        for write in writes:
            by_partition.setdefault(write.partition, []).append(write)
        records: list[ChangelogRecord] = []
        counts = self._counts
        decoded = self._decoded
        for partition, group in by_partition.items():
            with acting_as(partition):
                for write in group:
                    store = self._tables[write.table].data
                    value = write.value
                    encoded = self._encode(write.table, value)
                    cache = decoded.get(write.table)
                    if value is None:
                        store.pop(write.key, None)
                        counts[write.table, "keys_deleted"] += 1
                    else:
                        if cache is not None:
                            store[write.key] = encoded
                        else:
                            store[write.key] = value.value() if isinstance(value, Packed) else value
                        counts[write.table, "keys_updated"] += 1
                    if cache is not None:  # a packed value is decoded when next touched
                        cache.remember(write.key, None if isinstance(value, Packed) else value)
                    records.append(
                        ChangelogRecord(
                            self._topics[write.table], partition, write.key, encoded, write.table
                        )
                    )
        return records

    async def send(self, sender: BatchSender, records: Sequence[ChangelogRecord]) -> None:
        """Produce ``records``; each partition's persisted offset follows its batches."""
        if records:
            await sender.send_changelog(records, self._persisted)

    def _persisted(self, table: str, tp: TP, offset: int) -> None:
        data = self._tables[table].data
        app = self._tables[table].app
        if app.in_transaction:
            app.tables.persist_offset_on_commit(data, tp, offset)
        else:
            data.set_persisted_offset(tp, offset)

    def take_counts(self) -> Counter[tuple[str, str]]:
        """(table, operation) -> keys written since the last call (for Faust's table sensor)."""
        counts, self._counts = self._counts, Counter()
        return counts
