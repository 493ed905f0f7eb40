"""Which input offsets are safe to commit: every earlier record of the partition is handled.

A record is handled once it was applied, dead-lettered or re-published; one the event-time
aligner still holds is not, and neither is anything after it, however long ago that was
handled: committing past a held record would lose it in a crash. So a partition's safe offset
is its lowest held offset, or the offset after the last record taken when nothing is held.
Records arrive here in offset order per partition (the Kafka side checks continuity).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable

__all__ = ["OffsetLedger"]


class OffsetLedger:
    """Per partition: the next offset after the last record taken, and the offsets held.

    >>> ledger = OffsetLedger()
    >>> for offset in (10, 11, 12):
    ...     ledger.take("p", offset)
    >>> ledger.hold("p", 11)
    >>> ledger.safe("p")
    11
    >>> ledger.release("p", 11)
    >>> ledger.safe("p")
    13
    """

    def __init__(self) -> None:
        self._next: dict[Hashable, int] = {}
        #: Held offsets as a heap; a released one stays in it until it reaches the top.
        self._held: dict[Hashable, list[int]] = {}
        self._released: dict[Hashable, set[int]] = {}

    def take(self, tp: Hashable, offset: int) -> None:
        """The record at ``offset`` was received (handled now, unless it is then held)."""
        self._next[tp] = offset + 1

    def hold(self, tp: Hashable, offset: int) -> None:
        heapq.heappush(self._held.setdefault(tp, []), offset)

    def release(self, tp: Hashable, offset: int) -> None:
        held = self._held.get(tp)
        if not held:
            return
        if held[0] == offset:
            heapq.heappop(held)
        else:
            self._released.setdefault(tp, set()).add(offset)
        released = self._released.get(tp)
        while held and released and held[0] in released:
            released.discard(heapq.heappop(held))

    def safe(self, tp: Hashable) -> int | None:
        """The offset to commit for ``tp`` (None before its first record)."""
        held = self._held.get(tp)
        if held:
            return held[0]
        return self._next.get(tp)

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Revoked partitions: their held records are their next owner's to read again."""
        for tp in tps:
            self._next.pop(tp, None)
            self._held.pop(tp, None)
            self._released.pop(tp, None)
