"""What goes into a batch and what comes out of it, as plain data.

The pipeline never sees a Faust event or an aiokafka message: the worker turns what it consumed
into ``InputRecord``s and turns a ``BatchOutput`` back into table writes, produced records and
acks. Offline evaluation builds the same records from a log, so both run one orchestration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stream.pipeline.counts import Counts

__all__ = ["TABLES", "BatchOutput", "InputRecord", "OutputRecord", "TableWrite"]

#: The worker's tables, by the names ``TableWrite.table`` uses.
TABLES = ("users", "scores", "learners", "clock")


@dataclass(slots=True)
class InputRecord:
    """One consumed record. ``topic`` is the contract name (``clicks``, ``carts``, ``orders`` or
    ``clock``), without the deployment's prefix."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: The Kafka record timestamp (s): when the event reached the broker; 0 when unknown.
    timestamp_s: float = 0.0
    #: When the fetch that brought the record returned (ms), for event-time alignment
    #: (``stream.pipeline.ordering``); -inf when unknown.
    fetched_ms: float = float("-inf")


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """A record to produce. ``topic`` is a contract name; ``partition`` None lets the
    producer's partitioner choose (by key), a number is explicit (a re-keyed input).
    ``source`` is the input partition whose records produced it: with exactly-once
    processing it is produced in that partition's transaction."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None
    source: int | None = None


@dataclass(frozen=True, slots=True)
class TableWrite:
    """Set ``key`` of ``table`` to ``value`` (None: delete it), attributed to ``partition``
    (the changelog partition, which is the input partition the key lives on)."""

    table: str
    partition: int
    key: bytes
    value: Any


@dataclass
class BatchOutput:
    """Everything one call of ``Pipeline.process`` produced.

    The worker applies it in this order, which is what makes a crash at any point safe: write
    ``writes`` to the tables, produce ``records``, and only once both are durable commit
    ``commit``. A crash before the commit re-reads the batch, and the pipeline recognises its
    events as redeliveries.
    """

    writes: list[TableWrite] = field(default_factory=list)
    records: list[OutputRecord] = field(default_factory=list)
    #: (contract topic, partition) -> the next offset whose predecessors are all handled: safe
    #: to commit. Only partitions whose safe offset may have moved in this call are listed.
    commit: dict[tuple[str, int], int] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)
    #: Clock ticks handled: (partition, event time, idle users re-scored).
    ticks: list[tuple[int, int, int]] = field(default_factory=list)
