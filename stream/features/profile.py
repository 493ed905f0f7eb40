"""The per-user aggregate that events are folded into, in event-time order, and the vector read from it.

Windows are exponentially decayed counters: a count "over 24h" is ``sum(exp(-age / 24h))``
over the user's events, read at the time the vector is asked for. They cost one float per
window, need no buckets, and equal a brute-force sum over the raw events (a property test
checks it). Everything here is plain Python: the worker and offline training share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from stream import strict
from stream.contract.events import CartChange, Click, Event, Order
from stream.features.schema import FEATURE_NAMES, WINDOWS

__all__ = ["MISSING_HOURS", "Profile", "ProfileConfig"]

#: Recency of something that never happened: one year, with the matching ``has_*`` flag at 0.
MISSING_HOURS = 24.0 * 365

_WINDOW_MS = tuple(WINDOWS.values())
_N_WINDOWS = len(_WINDOW_MS)
# Offsets of each counted quantity in ``Profile.decayed`` (order of schema._COUNTED).
_CLICK, _ADD, _REMOVE, _ORDER, _SPEND = (i * _N_WINDOWS for i in range(5))


@dataclass(frozen=True)
class ProfileConfig:
    """``session_gap_ms``: inactivity that ends a session. ``affinity_half_life_ms``: how fast
    category interest fades. ``recent``: how many recent items/categories are kept."""

    session_gap_ms: int = 30 * 60_000
    affinity_half_life_ms: int = 3 * 86_400_000
    recent: int = 20


@dataclass(slots=True)
class Profile:
    """Folded history of one user. Apply events with ``apply`` in non-decreasing ``ts``."""

    decayed: list[float] = field(default_factory=lambda: [0.0] * (5 * _N_WINDOWS))
    decay_ts: int | None = None
    totals: list[float] = field(default_factory=lambda: [0, 0, 0, 0, 0.0])
    first_ts: int | None = None
    last_ts: int | None = None
    last_click: int | None = None
    last_cart: int | None = None
    last_order: int | None = None
    session_start: int | None = None
    session_events: int = 0
    session_added: bool = False
    session_ordered: bool = False
    sessions_total: int = 0
    carts_abandoned: int = 0
    cart: dict[str, list[float]] = field(default_factory=dict)  # item -> [quantity, price]
    affinity: dict[str, float] = field(default_factory=dict)
    affinity_ts: int | None = None
    recent_items: list[str] = field(default_factory=list)
    recent_categories: list[str] = field(default_factory=list)
    category_prices: dict[str, list[float]] = field(default_factory=dict)  # cat -> [sum, n]
    prices_seen: int = 0
    prices_imputed: int = 0

    # -- folding ------------------------------------------------------------------------------

    def apply(self, event: Event, config: ProfileConfig) -> None:
        ts = event.ts
        self._advance(ts, config)
        if isinstance(event, Click):
            self._price(event.category, event.price)
            self._count(_CLICK, 1.0, 0)
            self.last_click = ts
            self._interest(event.item_id, event.category, 1.0, config)
        elif isinstance(event, CartChange):
            price = self._price(event.category, event.price)
            self.last_cart = ts
            if event.action == "add":
                self._count(_ADD, 1.0, 1)
                line = self.cart.setdefault(event.item_id, [0, price])
                line[0] += event.quantity
                line[1] = price
                self.session_added = True
                self._interest(event.item_id, event.category, 3.0, config)
            else:
                self._count(_REMOVE, 1.0, 2)
                self._take_from_cart(event.item_id, event.quantity)
        elif isinstance(event, Order):
            self._count(_ORDER, 1.0, 3)
            self._count(_SPEND, event.total, 4)
            self.last_order = ts
            self.session_ordered = True
            for line in event.items:
                self._price(line.category, line.price)
                self._take_from_cart(line.item_id, line.quantity)
                self._interest(line.item_id, line.category, 5.0, config)

    def _advance(self, ts: int, config: ProfileConfig) -> None:
        """Move the decayed counters and the session to ``ts`` (never backwards)."""
        if self.decay_ts is not None and ts > self.decay_ts:
            age = ts - self.decay_ts
            decayed = self.decayed
            for w, window in enumerate(_WINDOW_MS):
                factor = math.exp(-age / window)
                for base in (_CLICK, _ADD, _REMOVE, _ORDER, _SPEND):
                    decayed[base + w] *= factor
        if self.decay_ts is None or ts > self.decay_ts:
            self.decay_ts = ts
        if self.first_ts is None:
            self.first_ts = ts
        if self.last_ts is None or ts - self.last_ts > config.session_gap_ms:
            if self._session_abandoned():
                self.carts_abandoned += 1
            self.session_start = ts
            self.session_events = 0
            self.session_added = self.session_ordered = False
            self.sessions_total += 1
        self.session_events += 1
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)

    def _session_abandoned(self) -> bool:
        return self.session_added and not self.session_ordered and bool(self.cart)

    def _count(self, base: int, amount: float, total_index: int) -> None:
        for w in range(_N_WINDOWS):
            self.decayed[base + w] += amount
        self.totals[total_index] += amount

    def _price(self, category: str, price: float | None) -> float:
        """A known price updates the user's per-category mean; a missing one is imputed from
        it (else from the user's overall mean, else 0) and counted."""
        stats = self.category_prices
        if price is not None:
            entry = stats.setdefault(category, [0.0, 0])
            entry[0] += price
            entry[1] += 1
            self.prices_seen += 1
            return price
        self.prices_imputed += 1
        entry = stats.get(category)
        if entry and entry[1]:
            return entry[0] / entry[1]
        total = sum(e[0] for _c, e in sorted(stats.items()))
        count = sum(e[1] for e in stats.values())
        return total / count if count else 0.0

    def _take_from_cart(self, item_id: str, quantity: int) -> None:
        line = self.cart.get(item_id)
        if line is not None:
            line[0] -= quantity
            if line[0] <= 0:
                del self.cart[item_id]

    def _interest(self, item_id: str, category: str, weight: float, config: ProfileConfig) -> None:
        ts = self.decay_ts or 0
        if self.affinity_ts is not None and ts > self.affinity_ts:
            factor = 0.5 ** ((ts - self.affinity_ts) / config.affinity_half_life_ms)
            self.affinity = {c: v * factor for c, v in self.affinity.items() if v * factor > 1e-6}
        self.affinity_ts = ts
        self.affinity[category] = self.affinity.get(category, 0.0) + weight
        self.recent_items.append(item_id)
        self.recent_categories.append(category)
        if len(self.recent_items) > config.recent:
            del self.recent_items[: -config.recent]
            del self.recent_categories[: -config.recent]

    # -- reading ------------------------------------------------------------------------------

    def vector(self, at_ms: int, config: ProfileConfig) -> list[float]:
        """The feature vector as of event time ``at_ms`` (``FEATURE_NAMES`` order).

        Reading earlier than the last applied event reads at the last event instead: the
        state cannot un-apply history.
        """
        t = at_ms if self.last_ts is None else max(at_ms, self.last_ts)
        out: list[float] = []
        age = 0 if self.decay_ts is None else t - self.decay_ts
        factors = [math.exp(-age / w) for w in _WINDOW_MS]
        for base in (_CLICK, _ADD, _REMOVE, _ORDER, _SPEND):
            out.extend(self.decayed[base + w] * factors[w] for w in range(_N_WINDOWS))
        clicks, adds, removes, orders, spend = self.totals
        out += [clicks, adds, removes, orders, spend]
        out += [_hours(t, self.last_click), _hours(t, self.last_cart), _hours(t, self.last_order)]
        out += [float(self.last_click is not None), float(self.last_cart is not None)]
        out += [float(self.last_order is not None)]
        tenure_days = 0.0 if self.first_ts is None else (t - self.first_ts) / 86_400_000
        out += [
            tenure_days,
            orders / max(tenure_days, 1.0) * 30.0,
            spend / orders if orders else 0.0,
        ]
        active = self.last_ts is not None and t - self.last_ts <= config.session_gap_ms
        minutes = (
            (self.last_ts - self.session_start) / 60_000
            if self.session_start is not None and self.last_ts is not None
            else 0.0
        )
        abandoned = self.carts_abandoned + (0 if active else int(self._session_abandoned()))
        out += [float(active), minutes, float(self.session_events), float(self.sessions_total)]
        out += [
            float(sum(q for q, _ in self.cart.values())),
            round(sum(q * p for _i, (q, p) in sorted(self.cart.items())), 6),
            float(abandoned),
        ]
        out += _affinity_summary(self.affinity)
        priced = self.prices_seen + self.prices_imputed
        out.append(self.prices_imputed / priced if priced else 0.0)
        assert len(out) == len(FEATURE_NAMES)
        return out

    def top_categories(
        self, at_ms: int, config: ProfileConfig, k: int = 5
    ) -> list[tuple[str, float]]:
        """Categories by decayed affinity at ``at_ms``, as shares summing to 1."""
        total = sum(sorted(self.affinity.values()))
        if not total:
            return []
        ranked = sorted(self.affinity.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [(c, v / total) for c, v in ranked]

    # -- (de)serialization -------------------------------------------------------------------

    def to_wire(self) -> list[Any]:
        return [getattr(self, name) for name in self.__slots__]

    @classmethod
    def from_wire(cls, values: Any) -> Profile:
        """The ``Profile`` that ``to_wire`` wrote, or ``CorruptState``: every field's type,
        bounds and the invariants ``vector`` relies on (e.g. ``decay_ts <= last_ts``, else a
        read would compute ``exp`` of a huge positive number) are checked; nothing converts,
        so the profile re-encodes to the same bytes."""
        n = len(cls.__slots__)
        (
            decayed,
            decay_ts,
            totals,
            first_ts,
            last_ts,
            last_click,
            last_cart,
            last_order,
            session_start,
            session_events,
            session_added,
            session_ordered,
            sessions_total,
            carts_abandoned,
            cart,
            affinity,
            affinity_ts,
            recent_items,
            recent_categories,
            category_prices,
            prices_seen,
            prices_imputed,
        ) = strict.need_list(values, "profile", length=n)
        big = strict.MAX_NUMBER
        for value in strict.need_list(decayed, "decayed", length=5 * _N_WINDOWS):
            strict.need_num(value, "a decayed counter", 0.0, big)
        for value in strict.need_list(totals, "totals", length=5):
            strict.need_num(value, "a total", 0.0, big)
        times = [
            strict.opt_int(t, name)
            for t, name in (
                (decay_ts, "decay_ts"),
                (first_ts, "first_ts"),
                (last_ts, "last_ts"),
                (last_click, "last_click"),
                (last_cart, "last_cart"),
                (last_order, "last_order"),
                (session_start, "session_start"),
                (affinity_ts, "affinity_ts"),
            )
        ]
        if (decay_ts is None) != (last_ts is None) or (decay_ts is not None and decay_ts > last_ts):
            raise strict.fail("decay_ts and last_ts disagree")
        if last_ts is not None and any(t is not None and t > last_ts for t in times):
            raise strict.fail("an event time is newer than last_ts")
        for value, name in (
            (session_events, "session_events"),
            (sessions_total, "sessions_total"),
            (carts_abandoned, "carts_abandoned"),
            (prices_seen, "prices_seen"),
            (prices_imputed, "prices_imputed"),
        ):
            strict.need_int(value, name)
        strict.need_bool(session_added, "session_added")
        strict.need_bool(session_ordered, "session_ordered")
        for item, line in strict.need_dict(cart, "cart").items():
            strict.need_str(item, "cart item")
            quantity, price = strict.need_list(line, "cart line", length=2)
            strict.need_num(quantity, "cart quantity", -big, big)
            strict.need_num(price, "cart price", 0.0, big)
        for category, weight in strict.need_dict(affinity, "affinity").items():
            strict.need_str(category, "affinity category")
            strict.need_num(weight, "affinity", 0.0, big)
        for value in strict.need_list(recent_items, "recent_items", max_len=100_000):
            strict.need_str(value, "a recent item")
        for value in strict.need_list(recent_categories, "recent_categories", max_len=100_000):
            strict.need_str(value, "a recent category")
        if len(recent_items) != len(recent_categories):
            raise strict.fail("recent_items and recent_categories differ in length")
        for category, entry in strict.need_dict(category_prices, "category_prices").items():
            strict.need_str(category, "price category")
            total, count = strict.need_list(entry, "category price", length=2)
            strict.need_num(total, "category price sum", 0.0, big)
            strict.need_int(count, "category price count")
        return cls(*values)

    def copy(self) -> Profile:
        return Profile(
            decayed=list(self.decayed),
            decay_ts=self.decay_ts,
            totals=list(self.totals),
            first_ts=self.first_ts,
            last_ts=self.last_ts,
            last_click=self.last_click,
            last_cart=self.last_cart,
            last_order=self.last_order,
            session_start=self.session_start,
            session_events=self.session_events,
            session_added=self.session_added,
            session_ordered=self.session_ordered,
            sessions_total=self.sessions_total,
            carts_abandoned=self.carts_abandoned,
            cart={k: list(v) for k, v in self.cart.items()},
            affinity=dict(self.affinity),
            affinity_ts=self.affinity_ts,
            recent_items=list(self.recent_items),
            recent_categories=list(self.recent_categories),
            category_prices={k: list(v) for k, v in self.category_prices.items()},
            prices_seen=self.prices_seen,
            prices_imputed=self.prices_imputed,
        )


def _hours(t: int, then: int | None) -> float:
    return MISSING_HOURS if then is None else (t - then) / 3_600_000


def _affinity_summary(affinity: dict[str, float]) -> list[float]:
    """Top share, entropy (nats) and number of categories: shop-agnostic, whatever its catalogue."""
    values = sorted(affinity.values())  # sums independent of dict order (decoded states)
    total = sum(values)
    if not total:
        return [0.0, 0.0, 0.0]
    shares = [v / total for v in values]
    entropy = -sum(p * math.log(p) for p in shares if p > 0)
    return [max(shares), entropy, float(len(shares))]
