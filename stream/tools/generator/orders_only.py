"""An orders-only shop: no clicks, no carts, months of sparse purchases, as a retailer's order
history looks when it is all a shop can export.

Customers buy and drop out the way the "buy till you die" models assume: each is acquired
at a uniform time in the acquisition window, buys at a rate ``lambda ~ Gamma(r, alpha)``
orders per day while alive, and after each order stops for good with probability
``p ~ Beta(a, b)``. After each order *including the first*, as the MBG/NBD variant assumes:
BG/NBD lets a customer drop out only after a repeat order, so a BG/NBD fit of this log finds
a lower rate and dropout than planted (``tests/stream/scoring/test_btyd.py``). Each order is one to three catalogue items from the customer's favourite
categories. The defaults give 66,659 orders from 20,000 customers over 270 days (64% of them
buy more than once, 60% are still alive at the end): the shape of a real retailer's history
``shopscore`` was judged on (tens of thousands of customers, about 50,000 orders in 9 months). The truth records each customer's rate, dropout probability and whether
they were still alive at the end, for judging churn and lifetime-value scores against.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from stream.tools.generator.catalogue import build_catalogue
from stream.tools.generator.config import CATEGORIES, DAY, DEFAULT_START_MS, truth_path
from stream.tools.generator.rand import Rand

__all__ = ["OrdersOnlyConfig", "generate_orders_only", "write_orders_only"]


@dataclass(frozen=True)
class OrdersOnlyConfig:
    """Everything that determines the log; the same config always gives the same events."""

    users: int = 20_000
    days: float = 270
    seed: int = 1
    start_ms: int = DEFAULT_START_MS
    #: Purchase rate while alive: Gamma with shape ``r`` and rate ``alpha`` (per day), mean
    #: ``r / alpha`` (one order in 50 days).
    r: float = 0.8
    alpha: float = 40.0
    #: Dropout after each order: Beta(``a``, ``b``), mean ``a / (a + b)`` (about one in six).
    a: float = 0.8
    b: float = 4.0
    #: Customers are acquired uniformly over this first share of the period.
    acquisition_share: float = 0.5

    def __post_init__(self) -> None:
        if self.users < 0 or not self.days > 0:
            raise ValueError("users must be >= 0 and days > 0")
        if min(self.r, self.alpha, self.a, self.b) <= 0:
            raise ValueError("r, alpha, a and b must be positive")
        if not 0 < self.acquisition_share <= 1:
            raise ValueError("acquisition_share must be within (0, 1]")

    @property
    def end_ms(self) -> int:
        """Exclusive end of the period."""
        return self.start_ms + round(self.days * DAY)


def _beta(rand: Rand, a: float, b: float) -> float:
    x, y = rand.gamma(a), rand.gamma(b)
    return x / (x + y) if x + y > 0 else 0.5


def generate_orders_only(config: OrdersOnlyConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every order in event-time order (generator events: dicts with ``type``), and the truth.

    >>> events, truth = generate_orders_only(OrdersOnlyConfig(users=50, days=60, seed=3))
    >>> {e["type"] for e in events}, len(truth["users"])
    ({'order'}, 50)
    >>> all(a["ts"] <= b["ts"] for a, b in zip(events, events[1:]))
    True
    """
    catalogue = build_catalogue(config.seed)
    end = config.end_ms
    window = config.acquisition_share * config.days * DAY
    events: list[dict[str, Any]] = []
    users: dict[str, dict[str, Any]] = {}
    for u in range(config.users):
        rand = Rand(config.seed, 11, u)
        uid = f"u{u:06d}"
        rate = rand.gamma(config.r) / config.alpha  # orders per day
        dropout = _beta(rand, config.a, config.b)
        favourites = [rand.below(len(CATEGORIES)) for _ in range(2)]
        ts = config.start_ms + int(rand.uniform(0, window))
        acquired, orders, spend, alive = ts, 0, 0.0, True
        while ts < end:
            events.append(_order(rand, catalogue, uid, ts, orders, favourites))
            spend += events[-1]["total"]
            orders += 1
            if rand.random() < dropout:
                alive = False
                break
            ts += max(1, int(rand.expo() / max(rate, 1e-9) * DAY))
        users[uid] = {
            "rate_per_day": rate,
            "dropout": dropout,
            "acquired_ts": acquired,
            "orders": orders,
            "spend": round(spend, 2),
            "alive_at_end": alive,
        }
    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    truth = {"version": 1, "config": asdict(config), "end_ms": end, "users": users}
    return events, truth


def write_orders_only(config: OrdersOnlyConfig, out: str | Path) -> dict[str, Any]:
    """Write the log (JSON lines, as ``shopscore generate`` writes) and its truth beside it."""
    out = Path(out)
    events, truth = generate_orders_only(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fh:
        fh.writelines(orjson.dumps(e) + b"\n" for e in events)
    tpath = truth_path(out)
    tpath.write_bytes(orjson.dumps(truth, option=orjson.OPT_INDENT_2))
    return {
        "events": len(events),
        "valid_events": len(events),
        "users": config.users,
        "start_ms": config.start_ms,
        "end_ms": config.end_ms,
        "log": str(out),
        "truth": str(tpath),
    }


def _order(
    rand: Rand, catalogue: Any, uid: str, ts: int, n: int, favourites: list[int]
) -> dict[str, Any]:
    items = []
    for _ in range(1 + rand.below(3)):
        c = (
            favourites[rand.below(len(favourites))]
            if rand.random() < 0.8
            else rand.below(len(CATEGORIES))
        )
        i = rand.below(len(catalogue.item_ids[c]))
        items.append(
            {
                "item_id": catalogue.item_ids[c][i],
                "price": catalogue.prices[c][i],
                "quantity": 1 + (rand.random() < 0.2),
                "category": CATEGORIES[c],
            }
        )
    total = round(math.fsum(it["price"] * it["quantity"] for it in items), 2)
    return {
        "type": "order",
        "event_id": f"{uid}-{n:06d}",
        "user_id": uid,
        "ts": ts,
        "order_id": f"o{uid}-{n:05d}",
        "items": items,
        "total": total,
        "session_id": None,
    }
