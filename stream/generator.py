"""Synthetic shop event log with known ground truth, so model quality can be measured honestly.

Generative model (every user has private random streams derived from ``(seed, user index)``,
so the log is byte-identical for the same arguments and users can be generated in any order):

* Catalogue: 12 categories of 50-300 items; prices are lognormal around a per-category level
  and popularity inside a category is Zipf-like. Spendier users lean towards pricier items.
* Users: some are present from the start, the rest arrive during the period (their first session
  is their arrival). Three correlated latent traits set the activity rate (sessions per week,
  lognormal, heavy-tailed), the spend level (order probability, basket size, price tier) and
  the cart-abandonment propensity. Category interests start Dirichlet (a few favourites) and
  drift: a log-space random walk plus occasional switches of the favourite category.
* Sessions arrive as a Poisson process modulated by time of day. A session is a burst of clicks
  seconds-to-minutes apart; some clicks lead to cart adds (a few are removed again) and the
  session ends with an order, an abandoned cart (sometimes ordered in a later session) or nothing.
* Churn: a constant hazard per user that falls with activity and spend and rises with
  abandonment. Activity fades over the week before the churn time, no order follows it, and at
  most a couple of click-only "ghost" sessions do.
* Planted change (``change_day``): from then on the hazard rises with activity instead (loyal
  heavy clickers start leaving), item popularity reshuffles and interests are pulled towards a
  new category mix, and users who stop ordering keep browsing ("window shoppers": click-only
  sessions at half their old rate) instead of going quiet, so recent clicks no longer say that
  a user stays.
* Dirt (invalid events, duplicates, ISO-8601 timestamps) comes from separate streams, so the
  valid events are the same whatever the dirt settings.

The file is ordered by arrival: valid events by ``(ts, event_id)``; a duplicate arrives up to
two minutes after its original (same payload, same ``ts``); an invalid event right after the
valid event it was derived from.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np
import orjson

__all__ = [
    "CATEGORIES",
    "DEFAULT_START",
    "DEFAULT_START_MS",
    "DEFECTS",
    "GeneratorConfig",
    "generate_events",
    "truth_path",
    "write_log",
]

DEFAULT_START = "2026-01-01T00:00:00Z"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SEC = 1_000
_MIN = 60 * _SEC
_HOUR = 60 * _MIN
_DAY = 24 * _HOUR
_TEN_YEARS = 3_652 * _DAY


def _iso_to_ms(text: str) -> int:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parsed - _EPOCH) // timedelta(milliseconds=1)


def _ms_to_iso(ms: int) -> str:
    """Integer arithmetic only, so the string is the same instant to the millisecond."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


DEFAULT_START_MS = _iso_to_ms(DEFAULT_START)

CATEGORIES: tuple[str, ...] = (
    "electronics", "books", "fashion", "home", "beauty", "sports",
    "toys", "grocery", "garden", "automotive", "music", "health",
)  # fmt: skip
_N_CAT = len(CATEGORIES)
_PRICE_MEDIAN = (180.0, 14.0, 45.0, 60.0, 22.0, 50.0, 28.0, 6.0, 35.0, 70.0, 16.0, 18.0)
_PRICE_SIGMA = (0.9, 0.5, 0.6, 0.8, 0.5, 0.7, 0.6, 0.6, 0.7, 0.8, 0.5, 0.6)
#: Mean number of extra units per cart line (groceries come in several).
_QTY_EXTRA = (0.03, 0.1, 0.15, 0.15, 0.3, 0.1, 0.2, 0.9, 0.3, 0.1, 0.05, 0.35)
#: Category popularity before and after the planted change (the "spring" mix).
_POP_BEFORE = (0.13, 0.10, 0.15, 0.10, 0.08, 0.07, 0.07, 0.11, 0.04, 0.04, 0.05, 0.06)
_POP_AFTER = (0.07, 0.06, 0.09, 0.08, 0.07, 0.14, 0.05, 0.08, 0.15, 0.04, 0.03, 0.14)
#: Price tilt of each spend tier: item weight is popularity * (price / category median) ** gamma.
_TIER_GAMMA = (-0.8, -0.4, 0.0, 0.4, 0.8)

# User model; the constants are calibrated so 30 days give ~40-100 events per user and
# roughly a third of the users churn within the period.
_P_FROM_START = 0.55  # share of users already customers when the period starts
_ACT_MEDIAN = 3.0  # sessions per week of the median user
_ACT_SIGMA = 0.85
_ACT_MAX = 60.0
_RHO_SPEND = 0.45  # correlation of the activity and spend traits
_INTEREST_ALPHA = 4.0  # Dirichlet concentration: small means a few favourite categories
_DRIFT_SIGMA = 0.12  # log-space random walk of interests, per sqrt(day)
_SWITCH_DAYS = 60.0  # mean time between switches of the favourite category
_PULL_DAYS = 20.0  # after the change, time scale of the pull towards _POP_AFTER
_DIURNAL_AMP = 0.7  # session rate is 1 + amp * cos(2 pi (hour - 20) / 24): evenings are busy
_FADE_MS = 7 * _DAY  # activity fades linearly over this time before churn
_MIN_SESSION_GAP = 10 * _MIN
_PENDING_MS = 7 * _DAY  # an abandoned cart can be ordered in a later session within this time
_P_RECOVER = 0.3
_CHURN_BASE = 0.012  # hazard per day of the median user before the change
_CHURN_BASE_AFTER = 0.014

#: Kinds of invalid event injected by ``bad_fraction``.
DEFECTS: tuple[str, ...] = (
    "missing_field",
    "unparseable_ts",
    "wrong_type",
    "negative_price",
    "negative_quantity",
    "absurd_quantity",
    "absurd_price",
    "future_ts",
    "bad_action",
)
_REQUIRED = {
    "click": ("user_id", "ts", "item_id"),
    "cart": ("user_id", "ts", "item_id", "action"),
    "order": ("user_id", "ts", "order_id", "items"),
}
_BLOCK_USERS = 5_000  # users per sorted run in write_log; bounds memory for large logs


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything that determines the log; the same config always gives the same bytes."""

    users: int = 1000
    days: float = 30
    seed: int = 1
    start_ms: int = DEFAULT_START_MS
    change_day: float | None = None
    bad_fraction: float = 0.0
    duplicate_fraction: float = 0.0
    iso_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.users < 0:
            raise ValueError(f"users must be >= 0, got {self.users}")
        if not self.days > 0:
            raise ValueError(f"days must be > 0, got {self.days}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0 <= self.start_ms < 10**14:
            raise ValueError(f"start_ms must be a non-negative epoch-ms value, got {self.start_ms}")
        if self.change_day is not None and not self.change_day >= 0:
            raise ValueError(f"change_day must be >= 0 or None, got {self.change_day}")
        for name in ("bad_fraction", "duplicate_fraction", "iso_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")

    @property
    def end_ms(self) -> int:
        """Exclusive end of the period."""
        return self.start_ms + round(self.days * _DAY)

    def as_dict(self) -> dict[str, Any]:
        """Normalised types, so the recorded config does not depend on int-vs-float arguments."""
        return {
            "users": int(self.users),
            "days": float(self.days),
            "seed": int(self.seed),
            "start_ms": int(self.start_ms),
            "end_ms": self.end_ms,
            "change_day": None if self.change_day is None else float(self.change_day),
            "bad_fraction": float(self.bad_fraction),
            "duplicate_fraction": float(self.duplicate_fraction),
            "iso_fraction": float(self.iso_fraction),
        }


def truth_path(log_path: str | Path) -> Path:
    """FILE.jsonl -> FILE.truth.json beside it (any other suffix is replaced the same way)."""
    path = Path(log_path)
    return path.with_name(path.stem + ".truth.json") if path.suffix else Path(f"{path}.truth.json")


# --------------------------------------------------------------------------------------------
# Random numbers
# --------------------------------------------------------------------------------------------


class _Rand:
    """Scalar draws built only on ``random.Random.random``.

    That is the one method Python promises to keep stable across versions, and a Python-level
    Mersenne Twister is far cheaper per scalar draw than a numpy Generator call.
    """

    __slots__ = ("random",)

    def __init__(self, *key: int) -> None:
        # A str seed is hashed with SHA-512 by random.seed (version 2): no per-process salt.
        self.random = random.Random("shopscore.generator/" + "/".join(map(str, key))).random

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def below(self, n: int) -> int:
        return min(int(self.random() * n), n - 1)

    def normal(self) -> float:
        u1 = 1.0 - self.random()  # (0, 1]
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * self.random())

    def expo(self) -> float:
        return -math.log(1.0 - self.random())

    def gamma(self, alpha: float) -> float:
        """Marsaglia-Tsang; alpha < 1 by the usual boost."""
        if alpha < 1.0:
            return self.gamma(alpha + 1.0) * (1.0 - self.random()) ** (1.0 / alpha)
        d = alpha - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        while True:
            x = self.normal()
            v = 1.0 + c * x
            if v <= 0.0:
                continue
            v = v * v * v
            u = 1.0 - self.random()
            if u < 1.0 - 0.0331 * x**4 or math.log(u) < 0.5 * x * x + d * (1.0 - v + math.log(v)):
                return d * v

    def poisson(self, lam: float) -> int:
        """Knuth's method: lam is always small here."""
        limit = math.exp(-lam)
        k = 0
        p = self.random()
        while p > limit:
            k += 1
            p *= self.random()
        return k

    def geometric(self, mean: float) -> int:
        """Failures before a success, with the given mean (heavy-ish tail of session lengths)."""
        if mean <= 0.0:
            return 0
        q = mean / (1.0 + mean)
        return int(math.log(1.0 - self.random()) / math.log(q))

    def pick(self, cdf: list[float]) -> int:
        i = bisect.bisect_right(cdf, self.random() * cdf[-1])
        return i if i < len(cdf) else len(cdf) - 1


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    ex = [math.exp(v - top) for v in logits]
    total = sum(ex)
    return [v / total for v in ex]


# --------------------------------------------------------------------------------------------
# Catalogue
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Catalogue:
    item_ids: tuple[tuple[str, ...], ...]  # [category][item]
    prices: tuple[tuple[float, ...], ...]
    cdf: tuple[tuple[tuple[list[float], ...], ...], ...]  # [regime][tier][category]
    mean_price: tuple[tuple[tuple[float, ...], ...], ...]  # [regime][tier][category]

    @property
    def n_items(self) -> int:
        return sum(len(ids) for ids in self.item_ids)


def _build_catalogue(seed: int) -> _Catalogue:
    """Regime 0 is the popularity before the planted change, regime 1 after it (new hits)."""
    rng = np.random.default_rng([seed, 0])
    item_ids: list[tuple[str, ...]] = []
    prices: list[tuple[float, ...]] = []
    weights: list[list[np.ndarray]] = [[], []]
    next_id = 0
    for c in range(_N_CAT):
        n = int(rng.integers(50, 301))
        raw = rng.lognormal(math.log(_PRICE_MEDIAN[c]), _PRICE_SIGMA[c], size=n)
        cat_prices = tuple(round(max(0.49, float(p)), 2) for p in raw)
        exponent = float(rng.uniform(0.9, 1.3))
        for regime in (0, 1):
            ranks = rng.permutation(n).astype(np.float64)
            weights[regime].append(1.0 / (ranks + 1.0) ** exponent)
        item_ids.append(tuple(f"i{next_id + k:05d}" for k in range(n)))
        prices.append(cat_prices)
        next_id += n
    cdf: list[tuple[tuple[list[float], ...], ...]] = []
    mean_price: list[tuple[tuple[float, ...], ...]] = []
    for regime in (0, 1):
        regime_cdf = []
        regime_mean = []
        for gamma in _TIER_GAMMA:
            tier_cdf = []
            tier_mean = []
            for c in range(_N_CAT):
                p = np.asarray(prices[c])
                w = weights[regime][c] * (p / _PRICE_MEDIAN[c]) ** gamma
                tier_cdf.append(np.cumsum(w / w.sum()).tolist())
                tier_mean.append(float((w * p).sum() / w.sum()))
            regime_cdf.append(tuple(tier_cdf))
            regime_mean.append(tuple(tier_mean))
        cdf.append(tuple(regime_cdf))
        mean_price.append(tuple(regime_mean))
    return _Catalogue(tuple(item_ids), tuple(prices), tuple(cdf), tuple(mean_price))


# --------------------------------------------------------------------------------------------
# One user
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    config: GeneratorConfig
    catalogue: _Catalogue
    start_ms: int
    end_ms: int
    change_ts: int | None  # None when there is no change inside the period
    pop_cdf: tuple[list[float], list[float]]  # category popularity before / after the change
    after_mix: tuple[float, ...]

    @classmethod
    def of(cls, config: GeneratorConfig) -> _Context:
        change_ts = None
        if config.change_day is not None:
            change_ts = config.start_ms + round(config.change_day * _DAY)
            if change_ts >= config.end_ms:
                change_ts = None
        total_after = sum(_POP_AFTER)
        return cls(
            config=config,
            catalogue=_build_catalogue(config.seed),
            start_ms=config.start_ms,
            end_ms=config.end_ms,
            change_ts=change_ts,
            pop_cdf=(list(accumulate(_POP_BEFORE)), list(accumulate(_POP_AFTER))),
            after_mix=tuple(w / total_after for w in _POP_AFTER),
        )


_Cart = list[tuple[int, int, int]]  # (category, item index, quantity)


class _User:
    """Simulates one user's sessions; the events list holds valid events in time order."""

    def __init__(self, u: int, ctx: _Context) -> None:
        self.u = u
        self.ctx = ctx
        self.cat = ctx.catalogue
        self.r = r = _Rand(ctx.config.seed, 1, u)
        self.uid = f"u{u:06d}"
        self.events: list[dict[str, Any]] = []
        self.n_sessions = 0
        self.n_orders = 0
        self.spend = 0.0
        self.cut = False  # the period ended mid-session

        span = ctx.end_ms - ctx.start_ms
        self.present_from_start = r.random() < _P_FROM_START
        self.start_ts = ctx.start_ms if self.present_from_start else ctx.start_ms + r.below(span)

        # Latent traits; the churn hazard below is a function of the same traits.
        self.z_act = z_act = r.normal()
        self.z_spend = z_spend = _RHO_SPEND * z_act + math.sqrt(1 - _RHO_SPEND**2) * r.normal()
        self.z_ab = z_ab = r.normal()
        self.activity = min(_ACT_MAX, _ACT_MEDIAN * math.exp(_ACT_SIGMA * z_act))
        self.extra_clicks = 3.0 * math.exp(0.3 * r.normal())
        self.p_buy = _sigmoid(-1.6 + 0.9 * z_spend)
        self.basket_lam = 0.45 * math.exp(0.4 * z_spend)
        self.tier = max(0, min(len(_TIER_GAMMA) - 1, round(2 + 1.1 * z_spend + 0.6 * r.normal())))
        self.p_abandon = _sigmoid(-1.2 + 1.1 * z_ab)

        gammas = [r.gamma(_INTEREST_ALPHA * w) + 1e-12 for w in _POP_BEFORE]
        total = sum(gammas)
        interests = [0.97 * g / total + 0.03 / _N_CAT for g in gammas]
        self.interests_start = interests
        self.logits = [math.log(p) for p in interests]
        self.interest_cdf = list(accumulate(interests))
        self.interests_end = interests
        self.drift_ts = self.start_ts

        self.hazard_before = _CHURN_BASE * math.exp(-0.8 * z_act - 0.6 * z_spend + 0.5 * z_ab)
        self.hazard_after = _CHURN_BASE_AFTER * math.exp(0.8 * z_act - 0.2 * z_spend + 0.1 * z_ab)
        churn_at = self._churn_time(r.expo())
        self.churn_ts: int | None = int(churn_at) if churn_at < ctx.end_ms else None
        self.pending: tuple[int, _Cart] | None = None

    # -- truth ------------------------------------------------------------------------------

    def _churn_time(self, budget: float) -> float:
        """Invert the cumulative hazard (piecewise constant: before / after the change)."""
        start, change = self.start_ts, self.ctx.change_ts
        before = self.hazard_before
        if change is None:
            return start + budget / before * _DAY
        span = max(0, change - start) / _DAY
        if budget < before * span:
            return start + budget / before * _DAY
        return max(start, change) + (budget - before * span) / self.hazard_after * _DAY

    def spend_level(self) -> float:
        """Expected spend per 30 active days at the starting interests (before any change)."""
        mean_price = self.cat.mean_price[0][self.tier]
        item_value = sum(
            p * mean_price[c] * (1.0 + _QTY_EXTRA[c]) for c, p in enumerate(self.interests_start)
        )
        next_soon = 1.0 - math.exp(-self.activity * _PENDING_MS / (7 * _DAY))
        recovered = (1.0 - self.p_buy) * self.p_abandon * _P_RECOVER * next_soon * 1.35
        per_session = self.p_buy * (1.0 + self.basket_lam) + recovered
        return self.activity * 30.0 / 7.0 * per_session * item_value

    def truth(self) -> dict[str, Any]:
        return {
            "churn_ts": self.churn_ts,
            "start_ts": self.start_ts,
            "activity_per_week": round(self.activity, 4),
            "spend_level": round(self.spend_level(), 2),
            "abandon_propensity": round(self.p_abandon, 4),
            "price_tier": self.tier,
            "interests_start": _interest_dict(self.interests_start),
            "interests_end": _interest_dict(self.interests_end),
            "sessions": self.n_sessions,
            "events": len(self.events),
            "orders": self.n_orders,
            "spend": round(self.spend, 2),
        }

    # -- dynamics -----------------------------------------------------------------------------

    def _fade(self, ts: float) -> float:
        churn = self.churn_ts
        if churn is None or ts <= churn - _FADE_MS:
            return 1.0
        return max(0.1, (churn - ts) / _FADE_MS)

    def _drift(self, ts: int) -> None:
        """Move interests from the last session to this one."""
        dt = (ts - self.drift_ts) / _DAY
        if dt <= 0:
            return
        r = self.r
        logits = self.logits
        step = _DRIFT_SIGMA * math.sqrt(dt)
        for c in range(_N_CAT):
            logits[c] += step * r.normal()
        change = self.ctx.change_ts
        after = change is not None and ts >= change
        if r.random() < 1.0 - math.exp(-dt / _SWITCH_DAYS):
            favourite = logits.index(max(logits))
            new = r.pick(self.ctx.pop_cdf[1 if after else 0])
            logits[favourite], logits[new] = logits[new], logits[favourite]
        probs = _softmax(logits)
        if after:
            assert change is not None
            pull = 1.0 - math.exp(-(ts - max(change, self.drift_ts)) / _DAY / _PULL_DAYS)
            probs = [
                (1.0 - pull) * p + pull * m for p, m in zip(probs, self.ctx.after_mix, strict=True)
            ]
            self.logits = [math.log(p) for p in probs]
        else:
            top = max(logits)
            self.logits = [v - top for v in logits]
        self.interests_end = probs
        self.interest_cdf = list(accumulate(probs))
        self.drift_ts = ts

    def run(self) -> _User:
        ctx, r = self.ctx, self.r
        stop = self.churn_ts if self.churn_ts is not None else ctx.end_ms
        rate_max = self.activity / (7 * _DAY) * (1.0 + _DIURNAL_AMP)  # sessions per ms
        t = float(self.start_ts)
        busy_until = -_MIN_SESSION_GAP
        first = not self.present_from_start  # a new user's arrival is their first session
        while True:
            if first:
                first = False
            else:
                t += r.expo() / rate_max
                if t >= stop:
                    break
                hour = (t % _DAY) / _HOUR
                diurnal = 1.0 + _DIURNAL_AMP * math.cos(2.0 * math.pi * (hour - 20.0) / 24.0)
                if r.random() * (1.0 + _DIURNAL_AMP) > diurnal * self._fade(t):
                    continue
            ts0 = max(int(t), busy_until + _MIN_SESSION_GAP)
            if ts0 >= stop:
                break
            self._drift(ts0)
            busy_until = self._session(ts0, ghost=False)
            t = max(t, float(busy_until))
            if self.cut:
                return self
        if self.churn_ts is not None and r.random() < 0.5:
            n_ghost = 1 + (r.random() < 0.35)
            offsets = sorted(r.uniform(0.5, 10.0) * _DAY for _ in range(n_ghost))
            for offset in offsets:
                ts0 = max(self.churn_ts + int(offset), busy_until + _MIN_SESSION_GAP)
                if ts0 >= ctx.end_ms:
                    break
                busy_until = self._session(ts0, ghost=True)
                if self.cut:
                    break
        change = ctx.change_ts
        if self.churn_ts is not None and change is not None and not self.cut:
            t = float(max(self.churn_ts, change, busy_until + _MIN_SESSION_GAP))
            while True:  # window shoppers: browsing goes on after the last order
                t += r.expo() / (rate_max / 2.0)
                if t >= ctx.end_ms:
                    break
                busy_until = self._session(max(int(t), busy_until + _MIN_SESSION_GAP), ghost=True)
                t = max(t, float(busy_until))
                if self.cut:
                    break
        return self

    # -- sessions -------------------------------------------------------------------------------

    def _emit(self, event: dict[str, Any]) -> bool:
        if self.cut or event["ts"] >= self.ctx.end_ms:
            self.cut = True
            return False
        event["event_id"] = f"{self.uid}-{len(self.events):06d}"
        self.events.append(event)
        return True

    def _click_gap(self) -> int:
        return int(min(15 * _MIN, max(_SEC, 25 * _SEC * math.exp(0.9 * self.r.normal()))))

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

    def _order(self, ts: int, sid: str, cart: _Cart) -> None:
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
        if pending is not None and ts0 - pending[0] > _PENDING_MS:
            self.pending = pending = None
        if not ghost and pending is not None and r.random() < _P_RECOVER * fade:
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
        kept: _Cart = []
        removed: _Cart = []
        for pos, (c, i) in enumerate(clicks):
            if pos:
                t += self._click_gap()
            self._click(t, sid, c, i)
            role = roles.get(pos)
            if role is not None:
                t += r.below(42 * _SEC) + 3 * _SEC
                line = (c, i, 1 + r.poisson(_QTY_EXTRA[c]))
                self._cart(t, sid, "add", line)
                if role == 0:
                    kept.append(line)
                elif role == 2:
                    removed.append(line)
        for line in removed:
            t += r.below(55 * _SEC) + 5 * _SEC
            self._cart(t, sid, "remove", line)
        if buying:
            t += r.below(220 * _SEC) + 20 * _SEC
            self._order(t, sid, kept)
            self.pending = None
        elif kept:
            self.pending = (t, kept)
        return t

    def _recovery_session(self, ts0: int, sid: str, regime: int, cart: _Cart) -> int:
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
        t += r.below(160 * _SEC) + 20 * _SEC
        self._order(t, sid, cart)
        return t


def _interest_dict(probs: list[float]) -> dict[str, float]:
    return {name: round(p, 4) for name, p in zip(CATEGORIES, probs, strict=True)}


# --------------------------------------------------------------------------------------------
# Dirt
# --------------------------------------------------------------------------------------------


def _copy_event(event: dict[str, Any]) -> dict[str, Any]:
    copy = dict(event)
    if "items" in copy:
        copy["items"] = [dict(item) for item in copy["items"]]
    return copy


def _as_cart(event: dict[str, Any]) -> dict[str, Any]:
    """A cart-add built from any valid event, for defects that need a cart's fields."""
    if event["type"] == "cart":
        return _copy_event(event)
    line = event["items"][0] if event["type"] == "order" else event
    return {
        "type": "cart", "event_id": "", "user_id": event["user_id"], "ts": event["ts"],
        "item_id": line["item_id"], "action": "add", "category": line["category"],
        "price": line["price"], "quantity": line.get("quantity", 1),
        "session_id": event["session_id"],
    }  # fmt: skip


def _make_bad(r: _Rand, event: dict[str, Any], defect: str) -> tuple[dict[str, Any], str]:
    """An invalid variant of a valid event, and a short description of what is wrong."""
    bad = _copy_event(event)
    kind = bad["type"]
    if defect == "missing_field":
        name = _REQUIRED[kind][r.below(len(_REQUIRED[kind]))]
        del bad[name]
        return bad, f"no {name}"
    if defect == "unparseable_ts":
        bad["ts"] = ("yesterday", "not-a-date", "2026-13-45T25:61:00Z", "")[r.below(4)]
        return bad, f"ts {bad['ts']!r}"
    if defect == "wrong_type":
        if kind == "order":
            if r.random() < 0.5:
                bad["items"] = "not-a-list"
                return bad, "items is a string"
            bad["total"] = "lots"
            return bad, "total is a string"
        bad["price"] = "abc"
        return bad, "price is a string"
    if defect == "negative_price":
        if kind == "order":
            bad["items"][0]["price"] = -bad["items"][0]["price"]
            return bad, "negative item price"
        bad["price"] = -bad["price"]
        return bad, "negative price"
    if defect == "absurd_price":
        if kind == "order":
            bad["items"][0]["price"] = 1e9
            return bad, "item price 1e9"
        bad["price"] = 1e9
        return bad, "price 1e9"
    if defect == "future_ts":
        bad["ts"] = bad["ts"] + _TEN_YEARS
        return bad, "ts ten years ahead"
    # The remaining defects need a quantity or an action: clicks become cart adds.
    if defect in ("negative_quantity", "absurd_quantity") and kind == "order":
        qty = -(1 + r.below(5)) if defect == "negative_quantity" else 10**7
        bad["items"][0]["quantity"] = qty
        return bad, f"item quantity {qty}"
    bad = _as_cart(event)
    if defect == "negative_quantity":
        bad["quantity"] = -(1 + r.below(5))
        return bad, f"quantity {bad['quantity']}"
    if defect == "absurd_quantity":
        bad["quantity"] = 10**7
        return bad, "quantity 1e7"
    assert defect == "bad_action", defect
    bad["action"] = "explode"
    return bad, "action 'explode'"


_Record = tuple[int, str, dict[str, Any]]  # (arrival key, event_id, event)


@dataclass
class _Totals:
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    iso: int = 0


def _user_records(
    u: int, ctx: _Context, totals: _Totals, users: dict[str, Any], invalid: list[dict[str, Any]]
) -> list[_Record]:
    """All records of one user (valid, duplicate, invalid), in no particular order."""
    cfg = ctx.config
    user = _User(u, ctx).run()
    users[user.uid] = user.truth()
    valid = user.events
    totals.valid += len(valid)
    records: list[_Record] = [(ev["ts"], ev["event_id"], ev) for ev in valid]
    if cfg.bad_fraction > 0:
        r = _Rand(cfg.seed, 2, u)
        n_bad = 0
        for ev in valid:
            if r.random() < cfg.bad_fraction:
                defect = DEFECTS[r.below(len(DEFECTS))]
                bad, detail = _make_bad(r, ev, defect)
                bad["event_id"] = eid = f"{user.uid}-x{n_bad:05d}"
                n_bad += 1
                records.append((ev["ts"] + 1 + r.below(999), eid, bad))
                invalid.append({"event_id": eid, "defect": defect, "detail": detail})
        totals.invalid += n_bad
    if cfg.iso_fraction > 0:
        r = _Rand(cfg.seed, 3, u)
        for ev in valid:
            if r.random() < cfg.iso_fraction:
                ev["ts"] = _ms_to_iso(ev["ts"])
                totals.iso += 1
    if cfg.duplicate_fraction > 0:
        r = _Rand(cfg.seed, 4, u)
        for key, eid, ev in records[: len(valid)]:
            if r.random() < cfg.duplicate_fraction:
                records.append((key + _SEC + r.below(119 * _SEC), eid, _copy_event(ev)))
                totals.duplicates += 1
    return records


def _truth(
    ctx: _Context, users: dict[str, Any], invalid: list[dict[str, Any]], totals: _Totals
) -> dict[str, Any]:
    cat = ctx.catalogue
    return {
        "version": 1,
        "config": ctx.config.as_dict(),
        "start_ms": ctx.start_ms,
        "end_ms": ctx.end_ms,
        "change_day": ctx.config.change_day,
        "change_ts": ctx.change_ts,
        "catalogue": {
            "categories": list(CATEGORIES),
            "items": cat.n_items,
            "items_per_category": {
                n: len(ids) for n, ids in zip(CATEGORIES, cat.item_ids, strict=True)
            },
            "median_price": dict(zip(CATEGORIES, _PRICE_MEDIAN, strict=True)),
        },
        "valid_events": totals.valid,
        "invalid": invalid,
        "duplicates": totals.duplicates,
        "iso_timestamps": totals.iso,
        "users": users,
    }


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def generate_events(config: GeneratorConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All events in file order (valid ones by (ts, event_id), dirt mixed in) and the truth.

    Holds the whole log in memory; ``write_log`` streams large logs instead.
    """
    ctx = _Context.of(config)
    totals = _Totals()
    users: dict[str, Any] = {}
    invalid: list[dict[str, Any]] = []
    records: list[_Record] = []
    for u in range(config.users):
        records.extend(_user_records(u, ctx, totals, users, invalid))
    records.sort(key=lambda rec: (rec[0], rec[1]))
    return [rec[2] for rec in records], _truth(ctx, users, invalid, totals)


def _sorted_lines(records: list[_Record]) -> list[bytes]:
    """Lines prefixed with a fixed-width key: byte order == (key, event_id) order, so sorted
    runs merge with plain line comparison. (key, event_id) is unique, so the order is total."""
    lines = [b"%015d\t%s\t%s\n" % (key, eid.encode(), orjson.dumps(ev)) for key, eid, ev in records]
    lines.sort()
    return lines


def _strip(lines: Iterator[bytes]) -> Iterator[bytes]:
    for line in lines:
        yield line.split(b"\t", 2)[2]


def write_log(
    config: GeneratorConfig,
    out: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the JSONL log and its truth file; memory stays bounded by sorting blocks of users
    into temporary runs beside ``out`` and merging them."""
    out = Path(out)
    tpath = truth_path(out)
    ctx = _Context.of(config)
    totals = _Totals()
    users: dict[str, Any] = {}
    invalid: list[dict[str, Any]] = []
    n_users = config.users
    n_lines = 0

    def block(lo: int, hi: int) -> list[bytes]:
        records: list[_Record] = []
        for u in range(lo, hi):
            records.extend(_user_records(u, ctx, totals, users, invalid))
        return _sorted_lines(records)

    bounds = [(lo, min(lo + _BLOCK_USERS, n_users)) for lo in range(0, n_users, _BLOCK_USERS)]
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(bounds) <= 1:
        lines = block(0, n_users)
        with out.open("wb") as fh:
            fh.writelines(_strip(iter(lines)))
        n_lines = len(lines)
        if progress is not None:
            progress(n_users, n_users)
    else:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".shopscore-gen-") as tmp:
            runs = []
            for k, (lo, hi) in enumerate(bounds):
                run = Path(tmp) / f"run{k:05d}"
                lines = block(lo, hi)
                with run.open("wb") as fh:
                    fh.writelines(lines)
                n_lines += len(lines)
                runs.append(run)
                del lines
                if progress is not None:
                    progress(hi, n_users)
            handles = [run.open("rb", buffering=1 << 16) for run in runs]
            try:
                with out.open("wb") as fh:
                    fh.writelines(_strip(heapq.merge(*handles)))
            finally:
                for handle in handles:
                    handle.close()
    tpath.write_bytes(orjson.dumps(_truth(ctx, users, invalid, totals), option=orjson.OPT_INDENT_2))
    return {
        "events": n_lines,
        "valid_events": totals.valid,
        "invalid_events": totals.invalid,
        "duplicates": totals.duplicates,
        "iso_timestamps": totals.iso,
        "users": n_users,
        "start_ms": ctx.start_ms,
        "end_ms": ctx.end_ms,
        "log": str(out),
        "truth": str(tpath),
    }
