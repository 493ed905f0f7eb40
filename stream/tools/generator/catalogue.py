"""The shop: items, prices and popularity per category, and the context one log is generated in."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from stream.tools.generator.config import DAY, N_CAT, GeneratorConfig

__all__ = [
    "POP_AFTER",
    "POP_BEFORE",
    "PRICE_MEDIAN",
    "PRICE_SIGMA",
    "QTY_EXTRA",
    "TIER_GAMMA",
    "Catalogue",
    "Context",
    "build_catalogue",
]

PRICE_MEDIAN = (180.0, 14.0, 45.0, 60.0, 22.0, 50.0, 28.0, 6.0, 35.0, 70.0, 16.0, 18.0)
PRICE_SIGMA = (0.9, 0.5, 0.6, 0.8, 0.5, 0.7, 0.6, 0.6, 0.7, 0.8, 0.5, 0.6)
#: Mean number of extra units per cart line (groceries come in several).
QTY_EXTRA = (0.03, 0.1, 0.15, 0.15, 0.3, 0.1, 0.2, 0.9, 0.3, 0.1, 0.05, 0.35)
#: Category popularity before and after the planted change (the "spring" mix).
POP_BEFORE = (0.13, 0.10, 0.15, 0.10, 0.08, 0.07, 0.07, 0.11, 0.04, 0.04, 0.05, 0.06)
POP_AFTER = (0.07, 0.06, 0.09, 0.08, 0.07, 0.14, 0.05, 0.08, 0.15, 0.04, 0.03, 0.14)
#: Price tilt of each spend tier: item weight is popularity * (price / category median) ** gamma.
TIER_GAMMA = (-0.8, -0.4, 0.0, 0.4, 0.8)


@dataclass(frozen=True)
class Catalogue:
    item_ids: tuple[tuple[str, ...], ...]  # [category][item]
    prices: tuple[tuple[float, ...], ...]
    cdf: tuple[tuple[tuple[list[float], ...], ...], ...]  # [regime][tier][category]
    mean_price: tuple[tuple[tuple[float, ...], ...], ...]  # [regime][tier][category]

    @property
    def n_items(self) -> int:
        return sum(len(ids) for ids in self.item_ids)


def build_catalogue(seed: int) -> Catalogue:
    """Regime 0 is the popularity before the planted change, regime 1 after it (new hits)."""
    rng = np.random.default_rng([seed, 0])
    item_ids: list[tuple[str, ...]] = []
    prices: list[tuple[float, ...]] = []
    weights: list[list[np.ndarray]] = [[], []]
    next_id = 0
    for c in range(N_CAT):
        n = int(rng.integers(50, 301))
        raw = rng.lognormal(math.log(PRICE_MEDIAN[c]), PRICE_SIGMA[c], size=n)
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
        for gamma in TIER_GAMMA:
            tier_cdf = []
            tier_mean = []
            for c in range(N_CAT):
                p = np.asarray(prices[c])
                w = weights[regime][c] * (p / PRICE_MEDIAN[c]) ** gamma
                tier_cdf.append(np.cumsum(w / w.sum()).tolist())
                tier_mean.append(float((w * p).sum() / w.sum()))
            regime_cdf.append(tuple(tier_cdf))
            regime_mean.append(tuple(tier_mean))
        cdf.append(tuple(regime_cdf))
        mean_price.append(tuple(regime_mean))
    return Catalogue(tuple(item_ids), tuple(prices), tuple(cdf), tuple(mean_price))


@dataclass(frozen=True)
class Context:
    config: GeneratorConfig
    catalogue: Catalogue
    start_ms: int
    end_ms: int
    change_ts: int | None  # None when there is no change inside the period
    pop_cdf: tuple[list[float], list[float]]  # category popularity before / after the change
    after_mix: tuple[float, ...]

    @classmethod
    def of(cls, config: GeneratorConfig) -> Context:
        change_ts = None
        if config.change_day is not None:
            change_ts = config.start_ms + round(config.change_day * DAY)
            if change_ts >= config.end_ms:
                change_ts = None
        total_after = sum(POP_AFTER)
        return cls(
            config=config,
            catalogue=build_catalogue(config.seed),
            start_ms=config.start_ms,
            end_ms=config.end_ms,
            change_ts=change_ts,
            pop_cdf=(list(accumulate(POP_BEFORE)), list(accumulate(POP_AFTER))),
            after_mix=tuple(w / total_after for w in POP_AFTER),
        )
