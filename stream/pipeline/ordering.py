"""Event-time alignment of co-partitioned input topics (Kafka Streams' stream-time synchronization).

A user's clicks, carts and orders live in three topics. When a worker catches up a backlog, the
consumer does not read them in step: the sparse ``orders`` topic can be hours or days of event
time ahead of ``clicks`` in one fetch. Applied as read, a user's orders would land before their
clicks and every later click would be "late". The aligner holds events per partition number and
releases them in event-time order, up to the low watermark of the topics that still have data
to deliver. A topic that is caught up does not hold others back. One whose state is unknown
(not fetched yet, being reassigned) holds them for at most ``max_hold_s`` of wall time. One
known to have more data on the broker keeps holding them however long that takes: a worker
busy scoring a backlog can leave a partition's buffer untouched for many seconds, and giving
up on it then would turn its events into late ones.

A topic counts as caught up only from a fetch that is at least as recent as the one that
brought the event being released. A high watermark is a snapshot: when a replay squeezes days
into seconds, a partition's watermark from one fetch ago may be hours of event time stale, and
trusting it would release an ``orders`` event ahead of ``clicks`` that were already on the
broker. Within one fetch response every partition's watermark is as fresh as its records, so
in real time this costs nothing; ``fresh_wait_s`` bounds the wait when it is not.

In real time every topic is caught up and events pass straight through.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["EventTimeAligner"]

T = TypeVar("T")

#: ``caught_up(topic, partition)``: False (more to read), None (not known yet), True (nothing
#: more to read now), or the time (ms) of the fetch that showed nothing more to read, which
#: only vouches for events fetched no later than that.
CaughtUp = Callable[[str, int], "bool | float | None"]


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

    def __init__(
        self, topics: Sequence[str], max_hold_s: float = 1.0, fresh_wait_s: float = 2.0
    ) -> None:
        self.topics = tuple(topics)
        self.max_hold_s = max_hold_s
        self.fresh_wait_s = fresh_wait_s
        # partition -> heap of (ts, seq, pushed at, fetched at (ms), item)
        self._heaps: dict[int, list[tuple[int, int, float, float, T]]] = {}
        self._head: dict[tuple[str, int], int] = {}
        self._last_push: dict[tuple[str, int], float] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())

    def push(
        self,
        topic: str,
        partition: int,
        *,
        ts: int,
        item: T,
        now: float,
        fetched_ms: float = float("-inf"),
    ) -> None:
        """Hold ``item``; ``fetched_ms`` is when the fetch that brought it returned (or later)."""
        entry = (ts, next(self._seq), now, fetched_ms, item)
        heapq.heappush(self._heaps.setdefault(partition, []), entry)
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
            watermark, fresh_ms = self._watermark(partition, caught_up, now)
            impatient = now - self.fresh_wait_s
            while heap and heap[0][0] <= watermark:
                _ts, _seq, pushed, fetched_ms, _item = heap[0]
                if fetched_ms > fresh_ms and pushed > impatient:
                    break  # a caught-up topic's watermark is older than this event's fetch
                out.append(heapq.heappop(heap)[4])
        return out

    def stalled(
        self, caught_up: CaughtUp, now: float, after_s: float
    ) -> list[tuple[int, list[str], int]]:
        """Partitions whose oldest held item has waited over ``after_s``: (partition, the
        topics known to have more to deliver, which hold it back, items held). For an
        operator's log: a topic that never delivers what the broker has holds its partition's
        events for good, and nothing else would say so."""
        out: list[tuple[int, list[str], int]] = []
        for partition, heap in self._heaps.items():
            if not heap or now - min(entry[2] for entry in heap) < after_s:
                continue
            behind = [t for t in self.topics if caught_up(t, partition) is False]
            out.append((partition, behind, len(heap)))
        return out

    def drain(self) -> list[T]:
        """Everything held, in ``ts`` order per partition (on shutdown or revocation)."""
        out: list[T] = []
        for heap in self._heaps.values():
            while heap:
                out.append(heapq.heappop(heap)[4])
        return out

    def forget_partitions(self, partitions: set[int]) -> list[T]:
        """Drop and return what is held for ``partitions`` (they were revoked)."""
        out: list[T] = []
        for partition in partitions:
            heap = self._heaps.pop(partition, [])
            out.extend(entry[4] for entry in sorted(heap, key=lambda e: (e[0], e[1])))
            for topic in self.topics:
                self._head.pop((topic, partition), None)
                self._last_push.pop((topic, partition), None)
        return out

    def _watermark(self, partition: int, caught_up: CaughtUp, now: float) -> tuple[float, float]:
        """The lowest event time reached by a topic that still has data to deliver, and the
        fetch time (ms) up to which the caught-up topics vouch that nothing is missing."""
        watermark = float("inf")
        fresh_ms = float("inf")
        stalled_before = now - self.max_hold_s
        for topic in self.topics:
            state = caught_up(topic, partition)
            if state is True:
                continue
            if state is not None and state is not False:
                fresh_ms = min(fresh_ms, state)
                continue
            key = (topic, partition)
            head = self._head.get(key)
            known_behind = state is False  # the broker has more of it: it will come
            if head is None:
                # Nothing has arrived yet: hold. When it is not even known whether data exists,
                # only until the oldest held item has waited max_hold_s.
                if known_behind:
                    return float("-inf"), fresh_ms
                oldest = min(entry[2] for entry in self._heaps[partition])
                if oldest > stalled_before:
                    return float("-inf"), fresh_ms
                continue
            if not known_behind and self._last_push[key] < stalled_before:
                continue  # stalled (and not known to have more): stop waiting for it
            watermark = min(watermark, head)
        return watermark, fresh_ms
