"""One user's sessions: clicks, cart lines and orders, emitted until the period ends.

``Shopper`` holds what a session needs; ``users.User`` adds who the user is (latent traits,
churn, drifting interests) and when the sessions happen.
"""

from __future__ import annotations

import math
from typing import Any

from stream.tools.generator.catalogue import QTY_EXTRA, Context
from stream.tools.generator.config import CATEGORIES, FADE_MS, MIN, P_RECOVER, PENDING_MS, SEC
from stream.tools.generator.rand import Rand

__all__ = ["Cart", "Shopper"]

Cart = list[tuple[int, int, int]]  # (category, item index, quantity)


class Shopper:
    """Emits one user's sessions; the events list holds valid events in time order.

    The behaviour attributes below come from the user's traits: the subclass sets them before
    the first session.
    """

    churn_ts: int | None
    tier: int
    p_buy: float
    p_abandon: float
    basket_lam: float
    extra_clicks: float
    interest_cdf: list[float]

    def __init__(self, u: int, ctx: Context) -> None:
        self.u = u
        self.ctx = ctx
        self.cat = ctx.catalogue
        self.r = Rand(ctx.config.seed, 1, u)
        self.uid = f"u{u:06d}"
        self.events: list[dict[str, Any]] = []
        self.n_sessions = 0
        self.n_orders = 0
        self.spend = 0.0
        self.cut = False  # the period ended mid-session
        self.pending: tuple[int, Cart] | None = None

    # -- sessions -------------------------------------------------------------------------------

    def _fade(self, ts: float) -> float:
        churn = self.churn_ts
        if churn is None or ts <= churn - FADE_MS:
            return 1.0
        return max(0.1, (churn - ts) / FADE_MS)

    def _emit(self, event: dict[str, Any]) -> bool:
        if self.cut or event["ts"] >= self.ctx.end_ms:
            self.cut = True
            return False
        event["event_id"] = f"{self.uid}-{len(self.events):06d}"
        self.events.append(event)
        return True

    def _click_gap(self) -> int:
        return int(min(15 * MIN, max(SEC, 25 * SEC * math.exp(0.9 * self.r.normal()))))

    def _item(self, c: int, regime: int) -> int:
        return self.r.pick(self.cat.cdf[regime][self.tier][c])

    def _click(self, ts: int, sid: str, c: int, i: int) -> None:
        self._emit({
            "type": "click", "event_id": "", "user_id": self.uid, "ts": ts,
            "item_id": self.cat.item_ids[c][i], "category": CATEGORIES[c],
            "price": self.cat.prices[c][i], "session_id": sid,
        })  # fmt: skip

    def _cart(self, ts: int, sid: str, action: str, line: tuple[int, int, int]) -> None:
        c, i, qty = line
        self._emit({
            "type": "cart", "event_id": "", "user_id": self.uid, "ts": ts,
            "item_id": self.cat.item_ids[c][i], "action": action, "category": CATEGORIES[c],
            "price": self.cat.prices[c][i], "quantity": qty, "session_id": sid,
        })  # fmt: skip

    def _order(self, ts: int, sid: str, cart: Cart) -> None:
        if not cart or (self.churn_ts is not None and ts >= self.churn_ts):
            return
        items = [
            {
                "item_id": self.cat.item_ids[c][i],
                "price": self.cat.prices[c][i],
                "quantity": qty,
                "category": CATEGORIES[c],
            }
            for c, i, qty in cart
        ]
        total = round(sum(it["price"] * it["quantity"] for it in items), 2)
        order_id = f"o{self.u:06d}-{self.n_orders:05d}"
        emitted = self._emit({
            "type": "order", "event_id": "", "user_id": self.uid, "ts": ts,
            "order_id": order_id, "items": items, "total": total, "session_id": sid,
        })  # fmt: skip
        if emitted:
            self.n_orders += 1
            self.spend += total

    def _session(self, ts0: int, ghost: bool) -> int:
        """Emit one session starting at ts0; returns the time of its last event."""
        r = self.r
        sid = f"s{self.u:06d}-{self.n_sessions:05d}"
        self.n_sessions += 1
        change = self.ctx.change_ts
        regime = 1 if change is not None and ts0 >= change else 0
        fade = self._fade(ts0)
        pending = self.pending
        if pending is not None and ts0 - pending[0] > PENDING_MS:
            self.pending = pending = None
        if not ghost and pending is not None and r.random() < P_RECOVER * fade:
            return self._recovery_session(ts0, sid, regime, pending[1])

        buying = not ghost and r.random() < self.p_buy * fade
        abandoning = not ghost and not buying and r.random() < self.p_abandon * fade
        n_keep = n_left = n_removed = 0
        if buying:
            n_keep = 1 + r.poisson(self.basket_lam)
            n_left = int(r.random() < 0.1)
            n_removed = int(r.random() < 0.12)
        elif abandoning:
            n_keep = 1 + int(r.random() < 0.35)
            n_removed = int(r.random() < 0.1)
        n_add = n_keep + n_left + n_removed
        n_clicks = 1 + r.below(3) if ghost else 1 + r.geometric(self.extra_clicks)
        n_clicks = max(n_clicks, n_add)

        focus = r.pick(self.interest_cdf)
        clicks = []
        for _ in range(n_clicks):
            c = focus if r.random() < 0.7 else r.pick(self.interest_cdf)
            clicks.append((c, self._item(c, regime)))
        # Cart adds go to distinct items, at random click positions.
        order = list(range(n_clicks))
        for k in range(n_clicks - 1, 0, -1):
            j = r.below(k + 1)
            order[k], order[j] = order[j], order[k]
        roles: dict[int, int] = {}  # click position -> 0 keep, 1 left in cart, 2 removed
        seen: set[tuple[int, int]] = set()
        wanted = [0] * n_keep + [1] * n_left + [2] * n_removed
        for pos in order:
            if len(roles) == len(wanted):
                break
            if clicks[pos] not in seen:
                seen.add(clicks[pos])
                roles[pos] = wanted[len(roles)]

        t = ts0
        kept: Cart = []
        removed: Cart = []
        for pos, (c, i) in enumerate(clicks):
            if pos:
                t += self._click_gap()
            self._click(t, sid, c, i)
            role = roles.get(pos)
            if role is not None:
                t += r.below(42 * SEC) + 3 * SEC
                line = (c, i, 1 + r.poisson(QTY_EXTRA[c]))
                self._cart(t, sid, "add", line)
                if role == 0:
                    kept.append(line)
                elif role == 2:
                    removed.append(line)
        for line in removed:
            t += r.below(55 * SEC) + 5 * SEC
            self._cart(t, sid, "remove", line)
        if buying:
            t += r.below(220 * SEC) + 20 * SEC
            self._order(t, sid, kept)
            self.pending = None
        elif kept:
            self.pending = (t, kept)
        return t

    def _recovery_session(self, ts0: int, sid: str, regime: int, cart: Cart) -> int:
        """The user comes back for an abandoned cart: a look at it, then the order."""
        r = self.r
        self.pending = None
        c, i, _ = cart[r.below(len(cart))]
        t = ts0
        self._click(t, sid, c, i)
        for _ in range(r.below(3)):
            t += self._click_gap()
            other = r.pick(self.interest_cdf)
            self._click(t, sid, other, self._item(other, regime))
        t += r.below(160 * SEC) + 20 * SEC
        self._order(t, sid, cart)
        return t
