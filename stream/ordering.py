"""Event-time alignment of co-partitioned input topics (Kafka Streams' stream-time synchronization).

A user's clicks, carts and orders live in three topics. When a worker catches up a backlog, the
consumer does not read them in step: the sparse ``orders`` topic can be hours or days of event
time ahead of ``clicks`` in one fetch. Applied as read, a user's orders would land before their
clicks and every later click would be "late". The aligner holds events per partition number and
releases them in event-time order, up to the low watermark of the topics that still have data
to deliver. A topic that is caught up does not hold others back, and neither does one that has
delivered nothing for ``max_hold_s`` of wall time: a stalled partition delays, never blocks,
the others. A topic that is merely slow (a backlog being read) keeps holding them.

In real time every topic is caught up and events pass straight through.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["EventTimeAligner"]

T = TypeVar("T")

#: ``caught_up(topic, partition)``: True (nothing more to read now), False (more to read),
#: None (not known yet).
CaughtUp = Callable[[str, int], "bool | None"]


class EventTimeAligner(Generic[T]):
    """Buffers items per partition and releases them in ``ts`` order across ``topics``.

    >>> a = EventTimeAligner(["clicks", "orders"], max_hold_s=60)
    >>> a.push("orders", 0, ts=50, item="o@50", now=0.0)
    >>> a.push("clicks", 0, ts=10, item="c@10", now=0.0)
    >>> more_clicks = lambda topic, partition: topic == "orders"  # clicks still has a backlog
    >>> a.release(more_clicks, now=0.1)
    ['c@10']
    >>> a.push("clicks", 0, ts=60, item="c@60", now=0.2)
    >>> a.release(more_clicks, now=0.3)
    ['o@50', 'c@60']
    """

    def __init__(self, topics: Sequence[str], max_hold_s: float = 1.0) -> None:
        self.topics = tuple(topics)
        self.max_hold_s = max_hold_s
        self._heaps: dict[int, list[tuple[int, int, float, T]]] = {}
        self._head: dict[tuple[str, int], int] = {}
        self._last_push: dict[tuple[str, int], float] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())

    def push(self, topic: str, partition: int, *, ts: int, item: T, now: float) -> None:
        heapq.heappush(self._heaps.setdefault(partition, []), (ts, next(self._seq), now, item))
        key = (topic, partition)
        if ts > self._head.get(key, ts - 1):
            self._head[key] = ts
        self._last_push[key] = now

    def release(self, caught_up: CaughtUp, now: float) -> list[T]:
        """Items that can be applied now, in ``ts`` order within each partition."""
        out: list[T] = []
        for partition, heap in self._heaps.items():
            if not heap:
                continue
            watermark = self._watermark(partition, caught_up, now)
            while heap and heap[0][0] <= watermark:
                out.append(heapq.heappop(heap)[3])
        return out

    def drain(self) -> list[T]:
        """Everything held, in ``ts`` order per partition (on shutdown or revocation)."""
        out: list[T] = []
        for heap in self._heaps.values():
            while heap:
                out.append(heapq.heappop(heap)[3])
        return out

    def forget_partitions(self, partitions: set[int]) -> list[T]:
        """Drop and return what is held for ``partitions`` (they were revoked)."""
        out: list[T] = []
        for partition in partitions:
            heap = self._heaps.pop(partition, [])
            out.extend(item for *_rest, item in sorted(heap))
            for topic in self.topics:
                self._head.pop((topic, partition), None)
                self._last_push.pop((topic, partition), None)
        return out

    def _watermark(self, partition: int, caught_up: CaughtUp, now: float) -> float:
        """The lowest event time reached by a topic that still has data to deliver."""
        watermark = float("inf")
        stalled_before = now - self.max_hold_s
        for topic in self.topics:
            if caught_up(topic, partition) is True:
                continue
            key = (topic, partition)
            head = self._head.get(key)
            if head is None:
                # Data may exist but none has arrived yet: hold, unless the oldest held item
                # has waited max_hold_s already.
                oldest = min(entry[2] for entry in self._heaps[partition])
                if oldest > stalled_before:
                    return float("-inf")
                continue
            if self._last_push[key] < stalled_before:
                continue  # stalled: stop waiting for it
            watermark = min(watermark, head)
        return watermark
