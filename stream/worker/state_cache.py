"""Per-user tables held as their changelog bytes, seen decoded through a bounded cache.

A decoded user is ~36 KB of Python objects (remembered event ids, pending predictions as lists
of floats) for ~2 KB of compressed changelog bytes, so a worker that held every user decoded
needed ~36 KB of RAM per customer, and a restart spent most of its time decoding every record
it recovered. The ``users`` and ``scores`` tables now hold the changelog form itself (their
codecs keep it as bytes, ``stream.worker.tables``), and ``DecodedTable`` decodes a user when
the pipeline or ``GET /users/{id}`` first touches them, keeping the last ``capacity`` decoded:
RSS follows the bytes plus the cache, and recovery only copies bytes.

A record is checked in full when it is first decoded rather than when it is recovered: one
that cannot be decoded (forged, damaged) is counted in
``shopscore_state_records_rejected_total{table}``, logged once, and read as absent, so the
user starts afresh and the next write replaces it. (The previous value cannot be kept as the
recovery guard keeps it, but a broker writer who can forge a record can as well write a
valid one: neither was ever a defence of one user's state.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from stream.errors import CorruptState

__all__ = ["DEFAULT_CAPACITY", "DecodedTable"]

#: Users kept decoded per table: at ~20 KB each (features) and ~17 KB (scoring), about
#: 370 MB for both tables when full. Any size is correct: a batch holds its own writes.
DEFAULT_CAPACITY = 10_000


class DecodedTable:
    """``get`` a table's value decoded: from the cache, else decoded from the table's bytes.

    ``decode(key, data)`` returns the object or raises ``CorruptState``; ``rejected(key,
    problem)`` is told of each record that could not be decoded. Values the table holds
    already decoded (records of an older format, decoded at recovery) are returned as they
    are. The owner calls ``remember`` for each write it puts into the table (the table then
    holds the bytes, the cache the object), ``follow_changelog`` once (what recovery and
    standby apply replaces what the cache held), and ``retain`` after a rebalance.
    """

    def __init__(
        self,
        table: Any,
        decode: Callable[[bytes, bytes], Any],
        rejected: Callable[[bytes, str], None],
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.table = table
        self.capacity = capacity
        self._decode = decode
        self._rejected = rejected
        self._cache: OrderedDict[bytes, Any] = OrderedDict()
        #: Decodes since the last ``take_misses`` (cache misses that found a stored value).
        self.misses = 0

    def get(self, key: bytes, default: Any = None) -> Any:
        cache = self._cache
        value = cache.get(key)
        if value is not None:
            cache.move_to_end(key)
            return value
        stored = self.table.get(key)
        if stored is None:
            return default
        if isinstance(stored, bytes | bytearray | memoryview):
            self.misses += 1
            try:
                value = self._decode(key, bytes(stored))
            except CorruptState as exc:
                self._rejected(key, str(exc)[:300])
                return default
        else:
            value = stored
        self._put(key, value)
        return value

    def remember(self, key: bytes, value: Any) -> None:
        """``value`` was written under ``key`` (None: deleted)."""
        if value is None:
            self._cache.pop(key, None)
        else:
            self._put(key, value)

    def follow_changelog(self) -> None:
        """Forget the decoded value of every key the table's recovery (or standby) applies
        from its changelog: the table then holds newer bytes than the cache."""
        apply = self.table.apply_changelog_batch
        cache = self._cache

        def apply_changelog_batch(batch: Iterable[Any]) -> None:
            events = list(batch)
            apply(events)
            for event in events:
                cache.pop(event.key, None)

        self.table.apply_changelog_batch = apply_changelog_batch

    def retain(self, keep: Callable[[bytes], bool]) -> int:
        """Forget the decoded values of the keys ``keep`` refuses (users of partitions this
        worker no longer owns); the number forgotten."""
        gone = [key for key in self._cache if not keep(key)]
        for key in gone:
            del self._cache[key]
        return len(gone)

    def take_misses(self) -> int:
        misses, self.misses = self.misses, 0
        return misses

    def __len__(self) -> int:
        return len(self.table)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.table)

    def __contains__(self, key: object) -> bool:
        return key in self._cache or key in self.table

    @property
    def cached(self) -> int:
        return len(self._cache)

    def _put(self, key: bytes, value: Any) -> None:
        cache = self._cache
        cache[key] = value
        cache.move_to_end(key)
        if len(cache) > self.capacity:
            cache.popitem(last=False)
