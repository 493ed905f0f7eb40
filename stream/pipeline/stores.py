"""The tables a batch reads, seen through the writes the batch has made so far.

The pipeline does not write tables: it returns its writes (``TableWrite``) and the worker
applies them once the batch is done. Within the batch, a later step must see an earlier one's
writes (a clock tick re-scores a user whose events the same batch applied), so reads go
through ``BatchView`` first.

A batch's writes are held until it ends, so a clock tick, which re-scores every idle user of
a partition in one batch, would hold every user's scoring state decoded at once (~17 KB each:
2.3 GB of RSS for 100,000 users). The tick ``pack``s its writes after each chunk of users
into their changelog form (``Packed``, ~1 KB), read back decoded if the batch touches the
user again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from stream.pipeline.records import TableWrite

__all__ = ["BatchView", "Packed", "Store", "Stores"]


@dataclass(frozen=True, slots=True)
class Packed:
    """A table value written in its changelog form, with what reads it back."""

    data: bytes
    decode: Callable[[bytes], Any]

    def value(self) -> Any:
        return self.decode(self.data)


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
            elif isinstance(write.value, Packed):
                table[write.key] = write.value.value()
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
            value = write.value
            return value.value() if isinstance(value, Packed) else value
        return getattr(self.stores, table).get(key)

    def put(self, table: str, partition: int, key: bytes, value: Any) -> None:
        """Write (``value`` None: delete); the last write of a key in a batch is the one kept."""
        self._writes.pop((table, key), None)  # keeps the order of the latest write
        self._writes[table, key] = TableWrite(table, partition, key, value)

    def pack(
        self,
        table: str,
        keys: Iterable[bytes],
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
    ) -> None:
        """Hold this batch's writes of ``keys`` in ``table`` in their changelog form
        (``Packed``): what ``get`` returns for them from now on is a decoded copy, so a caller
        that changes one must ``put`` it again (every caller does)."""
        writes = self._writes
        for key in keys:
            write = writes.get((table, key))
            if write is None or write.value is None or isinstance(write.value, Packed):
                continue
            writes[table, key] = TableWrite(
                table, write.partition, key, Packed(encode(write.value), decode)
            )

    def written(self, table: str) -> list[bytes]:
        """The keys of ``table`` this batch has set (not deleted) so far."""
        return [
            key for (name, key), w in self._writes.items() if name == table and w.value is not None
        ]

    def writes(self) -> list[TableWrite]:
        return list(self._writes.values())
