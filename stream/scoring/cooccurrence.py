"""Online item-to-item co-occurrence: "bought or carted together", in bounded memory.

The cart recommender's candidate source that needs no training: every cart and order is a
basket, each pair of items in it gains weight, and weights decay with event time (half-life 14
days by default) so a shop's changing assortment shows within days. Recommendations for a cart
sum the weights of the cart items' neighbours.

Memory is bounded whatever the shop's size: at most ``max_neighbours`` neighbours per item (the
weakest, after decay, is dropped) and at most ``max_items`` items (the least recently seen is
dropped with everything it holds). Only the first ``max_basket`` distinct items of a basket form
pairs, so one huge order cannot cost a quadratic burst.

Decay without touching every count: a weight added at ``ts`` is stored scaled by
``2 ** ((ts - t0) / half_life)``; since all weights decay at the same rate, comparisons never need
the decay, and only returned scores are decayed back to ``now_ms``. The scale is rebased before
floats would overflow.

Availability: the events carry no stock information, so an item not seen (in any basket)
within ``available_within_ms`` of ``now_ms`` is treated as unavailable and never recommended.

The state serialises to compact orjson (``to_bytes``/``from_bytes``) for a changelog table.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Sequence

import orjson
from river import base

__all__ = ["CoOccurrence"]

_DAY_MS = 86_400_000
_REBASE = 2.0**40  # rebase the scale before floats lose precision
_FORMAT = 1


def _best_first(kv: tuple[str, float]) -> tuple[float, str]:
    return (-kv[1], kv[0])


class CoOccurrence(base.Base):
    """Decayed, bounded item co-occurrence counts and item popularity.

    Parameters
    ----------
    half_life_ms
        Event time after which a co-occurrence counts half.
    max_neighbours
        Neighbours kept per item (the strongest).
    max_items
        Items kept (the most recently seen).
    max_basket
        Distinct items of one basket that form pairs (the first ones given).
    top_size
        Items kept in the popularity leaderboard behind ``popular`` (k plus exclusions must fit).

    Examples
    --------
    >>> day = 86_400_000
    >>> co = CoOccurrence()
    >>> co.update(["tent", "stove"], ts=0)
    >>> co.update(["tent", "stove", "mat"], ts=day)
    >>> co.update(["tent", "lamp"], ts=2 * day)
    >>> [(i, round(s, 3)) for i, s in co.candidates(["tent"], 2, now_ms=2 * day, exclude=set())]
    [('stove', 1.857), ('lamp', 1.0)]
    >>> co.candidates(["tent"], 2, now_ms=2 * day, exclude={"stove"})[0][0]
    'lamp'
    >>> co.candidates(["tent"], 5, now_ms=40 * day, exclude=set())  # not seen for 38 days
    []
    >>> co.popular(1, now_ms=2 * day)[0][0], co.last_seen("mat"), co.last_seen("sofa")
    ('tent', 86400000, None)
    >>> CoOccurrence.from_bytes(co.to_bytes()).to_bytes() == co.to_bytes()
    True
    """

    def __init__(
        self,
        *,
        half_life_ms: int = 14 * _DAY_MS,
        max_neighbours: int = 50,
        max_items: int = 50_000,
        max_basket: int = 50,
        top_size: int = 256,
    ) -> None:
        if min(half_life_ms, max_neighbours, max_items, max_basket, top_size) <= 0:
            raise ValueError("all CoOccurrence parameters must be positive")
        self.half_life_ms = half_life_ms
        self.max_neighbours = max_neighbours
        self.max_items = max_items
        self.max_basket = max_basket
        self.top_size = top_size

        self._t0: int | None = None  # event time at which the scale is 1
        self._last: dict[str, int] = {}  # item -> last seen ts; dict order = least recent first
        self._pop: dict[str, float] = {}  # item -> scaled popularity
        self._nb: dict[str, dict[str, float]] = {}  # item -> neighbour -> scaled weight
        self._top: dict[str, float] = {}  # the top_size most popular items (scaled)
        self._loser: str | None = None  # the leaderboard's weakest item, when known

    # -- scale -------------------------------------------------------------------------------

    def _scale(self, ts: int) -> float:
        if self._t0 is None:
            self._t0 = ts
        weight = 2.0 ** ((ts - self._t0) / self.half_life_ms)
        if weight > _REBASE:
            factor = 1.0 / weight
            self._t0 = ts
            self._pop = {i: v * factor for i, v in self._pop.items()}
            self._top = {i: v * factor for i, v in self._top.items()}
            self._nb = {i: {n: w * factor for n, w in nb.items()} for i, nb in self._nb.items()}
            weight = 1.0
        return weight

    def _decay_to(self, now_ms: int) -> float:
        if self._t0 is None:
            return 1.0
        return 2.0 ** ((self._t0 - now_ms) / self.half_life_ms)

    # -- learning ----------------------------------------------------------------------------

    def update(
        self, items: Sequence[str], ts: int, *, added: Collection[str] | None = None
    ) -> None:
        """Count a basket seen at event time ``ts``: an order's lines, or a cart's items.

        ``added`` (optional) names the items that are new in the basket, e.g. the item just
        added to a cart: then only pairs involving a new item gain weight, and only new items
        gain popularity, so calling this on every cart add with the whole cart does not count
        the older pairs again. Without it every pair and item counts.
        """
        basket = list(dict.fromkeys(items))
        if added is not None:
            seen = set(basket)
            basket += [i for i in dict.fromkeys(added) if i not in seen]
        if not basket:
            return
        new = set(basket) if added is None else set(added)
        weight = self._scale(ts)

        for item in basket:  # most recently seen go to the end of the LRU order
            previous = self._last.pop(item, None)
            self._last[item] = ts if previous is None else max(previous, ts)
            self._pop.setdefault(item, 0.0)
        for item in basket:
            if item in new:
                self._pop[item] += weight
                self._offer_top(item, self._pop[item])

        paired = basket[: self.max_basket]
        touched: set[str] = set()
        for i, a in enumerate(paired):
            for b in paired[i + 1 :]:
                if a in new or b in new:
                    for x, y in ((a, b), (b, a)):
                        nb = self._nb.setdefault(x, {})
                        nb[y] = nb.get(y, 0.0) + weight
                        touched.add(x)
        for item in touched:
            nb = self._nb[item]
            if len(nb) > self.max_neighbours:
                weakest = heapq.nsmallest(
                    len(nb) - self.max_neighbours, nb.items(), key=lambda kv: (kv[1], kv[0])
                )
                for neighbour, _ in weakest:
                    del nb[neighbour]

        while len(self._last) > self.max_items:
            self._evict(next(iter(self._last)))

    def _offer_top(self, item: str, value: float) -> None:
        """Keep ``_top`` = the ``top_size`` most popular items. Scaled popularity only grows,
        so an item that is not in the leaderboard can only enter it when it is updated; the
        weakest item is remembered until it changes (a scan of the board per update cost more
        than the rest of the update)."""
        top = self._top
        if item in top or len(top) < self.top_size:
            if item not in top or item == self._loser:
                self._loser = None
            top[item] = value
            return
        loser = self._loser
        if loser is None or loser not in top:
            loser = self._loser = min(top.items(), key=lambda kv: (kv[1], kv[0]))[0]
        if (value, item) > (top[loser], loser):
            del top[loser]
            top[item] = value
            self._loser = None

    def _evict(self, item: str) -> None:
        del self._last[item]
        self._pop.pop(item, None)
        self._top.pop(item, None)
        for neighbour in self._nb.pop(item, {}):
            other = self._nb.get(neighbour)
            if other is not None:
                other.pop(item, None)

    # -- reading -----------------------------------------------------------------------------

    def last_seen(self, item: str) -> int | None:
        """The latest event time ``item`` was in a basket, or None if unknown (or dropped)."""
        return self._last.get(item)

    def _available(self, item: str, now_ms: int, within_ms: int) -> bool:
        last = self._last.get(item)
        return last is not None and last >= now_ms - within_ms

    def _top_k(
        self, scores: Iterable[tuple[str, float]], k: int, now_ms: int
    ) -> list[tuple[str, float]]:
        pool = list(scores)
        # nsmallest over a list of at most k items is a sort; over a generator it would run
        # its heap with a key call per item whatever the size.
        best = heapq.nsmallest(k, pool, key=_best_first)
        decay = self._decay_to(now_ms)
        return [(item, score * decay) for item, score in best]

    def neighbour_weights(
        self, cart: Sequence[str], *, now_ms: int, available_within_ms: int = 30 * _DAY_MS
    ) -> dict[str, float]:
        """Every available neighbour of ``cart``'s items (never a cart item) with its summed
        weight, *not* decayed to ``now_ms``: all weights share one scale, so ratios and order
        need no decay (``candidates`` decays what it returns)."""
        in_cart = set(cart)
        scores: dict[str, float] = {}
        get = scores.get
        for item in dict.fromkeys(cart):
            for neighbour, weight in self._nb.get(item, {}).items():
                if neighbour not in in_cart:
                    scores[neighbour] = get(neighbour, 0.0) + weight
        oldest = now_ms - available_within_ms
        last = self._last
        return {i: s for i, s in scores.items() if last.get(i, oldest - 1) >= oldest}

    def candidates(
        self,
        cart: Sequence[str],
        k: int,
        *,
        now_ms: int,
        exclude: Collection[str],
        available_within_ms: int = 30 * _DAY_MS,
        weights: dict[str, float] | None = None,
    ) -> list[tuple[str, float]]:
        """Up to ``k`` items to add to ``cart``, by summed decayed co-occurrence with the cart's
        items; never an item in the cart, in ``exclude``, or unseen for ``available_within_ms``
        before ``now_ms`` (our proxy for unavailable). Scores are decayed to ``now_ms``.
        ``weights``: ``neighbour_weights`` of the same cart and time, when already computed."""
        if k <= 0:
            return []
        if weights is None:
            weights = self.neighbour_weights(
                cart, now_ms=now_ms, available_within_ms=available_within_ms
            )
        if exclude:
            return self._top_k(((i, s) for i, s in weights.items() if i not in exclude), k, now_ms)
        return self._top_k(weights.items(), k, now_ms)

    def popular(
        self,
        k: int,
        now_ms: int,
        *,
        exclude: Collection[str] = (),
        available_within_ms: int = 30 * _DAY_MS,
    ) -> list[tuple[str, float]]:
        """The fallback: up to ``k`` most popular available items (decayed basket counts), from a
        leaderboard of ``top_size`` items."""
        if k <= 0:
            return []
        available = (
            (i, s)
            for i, s in self._top.items()
            if i not in exclude and s > 0.0 and self._available(i, now_ms, available_within_ms)
        )
        return self._top_k(available, k, now_ms)

    def __len__(self) -> int:
        return len(self._last)

    # -- serialisation -----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Compact orjson: ``[format, params, t0, [[item, last_seen, pop, [[nb, w], ...]], ...],
        top items]``, items in least-recently-seen-first order."""
        items = [
            [
                item,
                last,
                self._pop.get(item, 0.0),
                [[n, w] for n, w in self._nb.get(item, {}).items()],
            ]
            for item, last in self._last.items()
        ]
        return orjson.dumps([_FORMAT, self._get_params(), self._t0, items, list(self._top)])

    @classmethod
    def from_bytes(cls, data: bytes) -> CoOccurrence:
        fmt, params, t0, items, top = orjson.loads(data)
        if fmt != _FORMAT:
            raise ValueError(f"unknown co-occurrence format {fmt}")
        co = cls(**params)
        co._t0 = t0
        for item, last, pop, neighbours in items:
            co._last[item] = last
            co._pop[item] = pop
            if neighbours:
                co._nb[item] = {n: w for n, w in neighbours}
        co._top = {item: co._pop[item] for item in top}
        return co
