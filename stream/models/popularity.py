"""Shop-wide item popularity on event time: the recommender's candidate source and its baseline.

Popularity is a decayed count of cart adds and ordered lines (half-life 7 days by default), so
a shop's changing favourites show within days. All items decay at the same rate, so ranking
never needs the decay applied: each count is stored scaled by ``2 ** ((ts - t0) / half_life)``
and only read values are decayed back to ``now``. Offline training and the scoring agents feed
it the same events (``observe``), in event-time order.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Collection

from stream.contract.events import UNKNOWN_CATEGORY, CartChange, Event, Order

__all__ = ["ItemPopularity"]

_REBASE_EXPONENT = 40  # rebase the scale (at 2 ** 40) before floats lose precision
_FORGET = 2.0**-40  # a decayed count below this is dropped at a rebase
_TOP = 64  # ranked items kept per category and shop-wide, so ``top`` needs no scan


class ItemPopularity:
    """Decayed add/order counts per item, with each item's category.

    >>> from stream.contract.events import CartChange
    >>> pop = ItemPopularity()
    >>> for n, item in enumerate(["a", "b", "b"]):
    ...     pop.observe(CartChange(f"e{n}", "u", 1_000 * n, item, "add", category="books"))
    >>> pop.top(2), pop.category_of("a"), round(pop.category_total("books"), 3)
    (['b', 'a'], 'books', 3.0)
    """

    def __init__(self, half_life_ms: int = 7 * 86_400_000) -> None:
        self.half_life_ms = half_life_ms
        self._t0: int | None = None
        self._now: int | None = None
        self._scaled: dict[str, float] = {}
        self._category: dict[str, str] = {}
        self._by_category: dict[str, dict[str, float]] = {}
        self._category_scaled: dict[str, float] = {}
        #: Ranked heads (``_TOP`` items) per category and shop-wide (key ``None``). Scaled
        #: counts only grow, so an item can only enter a head by its own increase.
        self._heads: dict[str | None, list[str]] = {}

    def __repr__(self) -> str:
        return f"ItemPopularity(half_life_ms={self.half_life_ms})"

    def observe(self, event: Event) -> None:
        """Count a cart add (by quantity) or each line of an order; clicks (and cart removals)
        only teach the item's category."""
        if isinstance(event, CartChange):
            if event.action == "add":
                self._add(event.item_id, event.category, float(event.quantity), event.ts)
            else:
                self._teach(event.item_id, event.category)
        elif isinstance(event, Order):
            for line in event.items:
                self._add(line.item_id, line.category, float(line.quantity), event.ts)
        else:
            self._teach(event.item_id, event.category)

    def _teach(self, item: str, category: str) -> None:
        """A click or a removal names the item's category without counting it: the first name
        stays, except that a real category replaces ``unknown`` (its counts move along)."""
        current = self._category.get(item)
        if current is None:
            self._category[item] = category
        elif current == UNKNOWN_CATEGORY and category != UNKNOWN_CATEGORY:
            self._move(item, current, category)

    def _add(self, item: str, category: str, amount: float, ts: int) -> None:
        current = self._category.get(item)
        if category == UNKNOWN_CATEGORY and current is not None:
            # A line without a category (e.g. an order line) counts under the item's known one.
            category = current
        if not (amount > 0 and math.isfinite(amount)):
            self._teach(item, category)
            return
        if self._t0 is None:
            self._t0 = ts
        if self._now is None or ts > self._now:
            self._now = ts
        exponent = (ts - self._t0) / self.half_life_ms
        if exponent > _REBASE_EXPONENT:
            # Rebased before the power is taken: ``2.0 ** x`` overflows (raises) past x = 1024,
            # i.e. an event ~20 years after the first one (valid timestamps reach back to 2000).
            self._rebase(ts)
            exponent = 0.0
        value = amount * 2.0**exponent  # 0.0 for an event far older than the scale's origin
        if current is not None and current != category:  # the item moved category
            self._move(item, current, category)
        self._category[item] = category
        if value <= 0.0:
            return
        self._scaled[item] = self._scaled.get(item, 0.0) + value
        bucket = self._by_category.setdefault(category, {})
        bucket[item] = bucket.get(item, 0.0) + value
        self._category_scaled[category] = self._category_scaled.get(category, 0.0) + value
        for key in (None, category):
            head = self._heads.get(key)
            if head is not None:
                self._promote(head, item)

    def _move(self, item: str, previous: str, category: str) -> None:
        """Carry the item's count from ``previous`` to ``category``. ``previous`` may hold no
        count of it at all (it was only clicked there), or not exist as a category yet."""
        bucket = self._by_category.get(previous)
        if bucket is not None and item in bucket:
            left = bucket.pop(item)
            if bucket:
                total = self._category_scaled.get(previous, 0.0) - left
                self._category_scaled[previous] = max(total, 0.0)
            else:  # exactly nothing left (no float residue of subtractions)
                del self._by_category[previous]
                self._category_scaled.pop(previous, None)
            head = self._heads.get(previous)
            if head is not None and item in head:
                del self._heads[previous]  # rebuilt when next read: another item takes its place
        self._category[item] = category
        carried = self._scaled.get(item, 0.0)
        if carried > 0.0:
            target = self._by_category.setdefault(category, {})
            target[item] = target.get(item, 0.0) + carried
            self._category_scaled[category] = self._category_scaled.get(category, 0.0) + carried
            head = self._heads.get(category)
            if head is not None:
                self._promote(head, item)

    def _rank(self, item: str) -> tuple[float, str]:
        return (-self._scaled.get(item, 0.0), item)

    def _promote(self, head: list[str], item: str) -> None:
        """Keep ``head`` the exact top ``_TOP`` after ``item``'s count grew."""
        if item in head:
            head.remove(item)
        elif len(head) >= _TOP and self._rank(item) > self._rank(head[-1]):
            return
        bisect.insort(head, item, key=self._rank)
        del head[_TOP:]

    def _head(self, key: str | None) -> list[str]:
        head = self._heads.get(key)
        if head is None:
            pool = self._scaled if key is None else self._by_category.get(key, {})
            head = heapq.nsmallest(_TOP, (i for i, v in pool.items() if v > 0), key=self._rank)
            self._heads[key] = head
        return head

    def _rebase(self, ts: int) -> None:
        """Move the scale's origin to ``ts``. Counts decayed below ``_FORGET`` (a single add
        ~40 half-lives old) are forgotten, so items nobody adds any more do not pile up; the
        category totals are summed afresh (no residue of earlier moves) and the ranked heads
        rebuilt when next read."""
        assert self._t0 is not None
        factor = 2.0 ** (-(ts - self._t0) / self.half_life_ms)  # underflows to 0.0, never raises
        self._scaled = {i: w for i, v in self._scaled.items() if (w := v * factor) >= _FORGET}
        by_category: dict[str, dict[str, float]] = {}
        for category, items in self._by_category.items():
            kept = {i: w for i, v in items.items() if (w := v * factor) >= _FORGET}
            if kept:
                by_category[category] = kept
        self._by_category = by_category
        self._category_scaled = {c: math.fsum(items.values()) for c, items in by_category.items()}
        self._heads = {}
        self._t0 = ts

    def _decay(self) -> float:
        if self._t0 is None or self._now is None:
            return 1.0
        return 2.0 ** (-(self._now - self._t0) / self.half_life_ms)

    def category_of(self, item: str) -> str | None:
        return self._category.get(item)

    def score(self, item: str) -> float:
        """The item's decayed count as of the newest observed event."""
        return self._scaled.get(item, 0.0) * self._decay()

    def category_total(self, category: str) -> float:
        return max(self._category_scaled.get(category, 0.0) * self._decay(), 1e-12)

    def top(
        self, n: int, *, category: str | None = None, exclude: Collection[str] = ()
    ) -> list[str]:
        """The ``n`` most popular items (of ``category`` if given), ties by item id."""
        if n + len(exclude) <= _TOP:
            ranked = self._head(category)
        else:
            pool = self._scaled if category is None else self._by_category.get(category, {})
            ranked = heapq.nsmallest(
                n + len(exclude), (i for i, v in pool.items() if v > 0), key=self._rank
            )
        return [i for i in ranked if i not in exclude][:n]
