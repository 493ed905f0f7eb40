"""One simulated user: latent traits, churn time, drifting interests and when sessions happen."""

from __future__ import annotations

import math
from itertools import accumulate
from typing import Any

from stream.tools.generator.catalogue import POP_BEFORE, QTY_EXTRA, TIER_GAMMA, Context
from stream.tools.generator.config import (
    ACT_MAX,
    ACT_MEDIAN,
    ACT_SIGMA,
    CATEGORIES,
    CHURN_BASE,
    CHURN_BASE_AFTER,
    DAY,
    DIURNAL_AMP,
    DRIFT_SIGMA,
    HOUR,
    INTEREST_ALPHA,
    MIN_SESSION_GAP,
    N_CAT,
    P_FROM_START,
    P_RECOVER,
    PENDING_MS,
    PULL_DAYS,
    RHO_SPEND,
    SWITCH_DAYS,
)
from stream.tools.generator.rand import sigmoid, softmax
from stream.tools.generator.sessions import Shopper

__all__ = ["User", "interest_dict"]


class User(Shopper):
    """Simulates one user's sessions; the events list holds valid events in time order."""

    def __init__(self, u: int, ctx: Context) -> None:
        super().__init__(u, ctx)
        r = self.r

        span = ctx.end_ms - ctx.start_ms
        self.present_from_start = r.random() < P_FROM_START
        self.start_ts = ctx.start_ms if self.present_from_start else ctx.start_ms + r.below(span)

        # Latent traits; the churn hazard below is a function of the same traits.
        self.z_act = z_act = r.normal()
        self.z_spend = z_spend = RHO_SPEND * z_act + math.sqrt(1 - RHO_SPEND**2) * r.normal()
        self.z_ab = z_ab = r.normal()
        self.activity = min(ACT_MAX, ACT_MEDIAN * math.exp(ACT_SIGMA * z_act))
        self.extra_clicks = 3.0 * math.exp(0.3 * r.normal())
        self.p_buy = sigmoid(-1.6 + 0.9 * z_spend)
        self.basket_lam = 0.45 * math.exp(0.4 * z_spend)
        self.tier = max(0, min(len(TIER_GAMMA) - 1, round(2 + 1.1 * z_spend + 0.6 * r.normal())))
        self.p_abandon = sigmoid(-1.2 + 1.1 * z_ab)

        gammas = [r.gamma(INTEREST_ALPHA * w) + 1e-12 for w in POP_BEFORE]
        total = sum(gammas)
        interests = [0.97 * g / total + 0.03 / N_CAT for g in gammas]
        self.interests_start = interests
        self.logits = [math.log(p) for p in interests]
        self.interest_cdf = list(accumulate(interests))
        self.interests_end = interests
        self.drift_ts = self.start_ts

        self.hazard_before = CHURN_BASE * math.exp(-0.8 * z_act - 0.6 * z_spend + 0.5 * z_ab)
        self.hazard_after = CHURN_BASE_AFTER * math.exp(0.8 * z_act - 0.2 * z_spend + 0.1 * z_ab)
        churn_at = self._churn_time(r.expo())
        self.churn_ts = int(churn_at) if churn_at < ctx.end_ms else None

    # -- truth ------------------------------------------------------------------------------

    def _churn_time(self, budget: float) -> float:
        """Invert the cumulative hazard (piecewise constant: before / after the change)."""
        start, change = self.start_ts, self.ctx.change_ts
        before = self.hazard_before
        if change is None:
            return start + budget / before * DAY
        span = max(0, change - start) / DAY
        if budget < before * span:
            return start + budget / before * DAY
        return max(start, change) + (budget - before * span) / self.hazard_after * DAY

    def spend_level(self) -> float:
        """Expected spend per 30 active days at the starting interests (before any change)."""
        mean_price = self.cat.mean_price[0][self.tier]
        item_value = sum(
            p * mean_price[c] * (1.0 + QTY_EXTRA[c]) for c, p in enumerate(self.interests_start)
        )
        next_soon = 1.0 - math.exp(-self.activity * PENDING_MS / (7 * DAY))
        recovered = (1.0 - self.p_buy) * self.p_abandon * P_RECOVER * next_soon * 1.35
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
            "interests_start": interest_dict(self.interests_start),
            "interests_end": interest_dict(self.interests_end),
            "sessions": self.n_sessions,
            "events": len(self.events),
            "orders": self.n_orders,
            "spend": round(self.spend, 2),
        }

    # -- dynamics -----------------------------------------------------------------------------

    def _drift(self, ts: int) -> None:
        """Move interests from the last session to this one."""
        dt = (ts - self.drift_ts) / DAY
        if dt <= 0:
            return
        r = self.r
        logits = self.logits
        step = DRIFT_SIGMA * math.sqrt(dt)
        for c in range(N_CAT):
            logits[c] += step * r.normal()
        change = self.ctx.change_ts
        after = change is not None and ts >= change
        if r.random() < 1.0 - math.exp(-dt / SWITCH_DAYS):
            favourite = logits.index(max(logits))
            new = r.pick(self.ctx.pop_cdf[1 if after else 0])
            logits[favourite], logits[new] = logits[new], logits[favourite]
        probs = softmax(logits)
        if after:
            assert change is not None
            pull = 1.0 - math.exp(-(ts - max(change, self.drift_ts)) / DAY / PULL_DAYS)
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

    def run(self) -> User:
        ctx, r = self.ctx, self.r
        stop = self.churn_ts if self.churn_ts is not None else ctx.end_ms
        rate_max = self.activity / (7 * DAY) * (1.0 + DIURNAL_AMP)  # sessions per ms
        t = float(self.start_ts)
        busy_until = -MIN_SESSION_GAP
        first = not self.present_from_start  # a new user's arrival is their first session
        while True:
            if first:
                first = False
            else:
                t += r.expo() / rate_max
                if t >= stop:
                    break
                hour = (t % DAY) / HOUR
                diurnal = 1.0 + DIURNAL_AMP * math.cos(2.0 * math.pi * (hour - 20.0) / 24.0)
                if r.random() * (1.0 + DIURNAL_AMP) > diurnal * self._fade(t):
                    continue
            ts0 = max(int(t), busy_until + MIN_SESSION_GAP)
            if ts0 >= stop:
                break
            self._drift(ts0)
            busy_until = self._session(ts0, ghost=False)
            t = max(t, float(busy_until))
            if self.cut:
                return self
        if self.churn_ts is not None and r.random() < 0.5:
            n_ghost = 1 + (r.random() < 0.35)
            offsets = sorted(r.uniform(0.5, 10.0) * DAY for _ in range(n_ghost))
            for offset in offsets:
                ts0 = max(self.churn_ts + int(offset), busy_until + MIN_SESSION_GAP)
                if ts0 >= ctx.end_ms:
                    break
                busy_until = self._session(ts0, ghost=True)
                if self.cut:
                    break
        change = ctx.change_ts
        if self.churn_ts is not None and change is not None and not self.cut:
            t = float(max(self.churn_ts, change, busy_until + MIN_SESSION_GAP))
            while True:  # window shoppers: browsing goes on after the last order
                t += r.expo() / (rate_max / 2.0)
                if t >= ctx.end_ms:
                    break
                busy_until = self._session(max(int(t), busy_until + MIN_SESSION_GAP), ghost=True)
                t = max(t, float(busy_until))
                if self.cut:
                    break
        return self


def interest_dict(probs: list[float]) -> dict[str, float]:
    return {name: round(p, 4) for name, p in zip(CATEGORIES, probs, strict=True)}
