"""The tables a batch reads, seen through the writes the batch has made so far.

The pipeline does not write tables: it returns its writes (``TableWrite``) and the worker
applies them once the batch is done. Within the batch, a later step must see an earlier one's
writes (a clock tick re-scores a user whose events the same batch applied), so reads go
through ``BatchView`` first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from stream.pipeline.records import TableWrite

__all__ = ["BatchView", "Store", "Stores"]


class Store(Protocol):
    """What the pipeline needs of a table: a Faust table and a dict both are one."""

    def get(self, key: bytes, /) -> Any: ...

    def __iter__(self) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class Stores:
    """The worker's four tables, keyed by bytes (``stream.pipeline.records.TABLES``)."""

    users: Store
    scores: Store
    learners: Store
    clock: Store

    @classmethod
    def in_memory(cls) -> Stores:
        """Dicts, for offline evaluation and tests; ``apply`` writes a batch into them."""
        return cls({}, {}, {}, {})

    def apply(self, writes: list[TableWrite]) -> None:
        """Apply ``writes`` to stores that are dicts (the worker writes its Faust tables)."""
        for write in writes:
            table: dict[bytes, Any] = getattr(self, write.table)
            if write.value is None:
                table.pop(write.key, None)
            else:
                table[write.key] = write.value


class BatchView:
    """``stores`` as the running batch sees them: its own writes, else the stored value."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self._writes: dict[tuple[str, bytes], TableWrite] = {}

    def get(self, table: str, key: bytes) -> Any:
        write = self._writes.get((table, key))
        if write is not None:
            return write.value
        return getattr(self.stores, table).get(key)

    def put(self, table: str, partition: int, key: bytes, value: Any) -> None:
        """Write (``value`` None: delete); the last write of a key in a batch is the one kept."""
        self._writes.pop((table, key), None)  # keeps the order of the latest write
        self._writes[table, key] = TableWrite(table, partition, key, value)

    def written(self, table: str) -> list[bytes]:
        """The keys of ``table`` this batch has set (not deleted) so far."""
        return [
            key for (name, key), w in self._writes.items() if name == table and w.value is not None
        ]

    def writes(self) -> list[TableWrite]:
        return list(self._writes.values())
