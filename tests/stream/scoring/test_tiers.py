"""SpendTiers: tiers follow the shop's own spend distribution, whatever its price level."""

from __future__ import annotations

import pickle
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.scoring.tiers import TIERS, SpendTiers

spends = st.lists(st.floats(0, 1e5, allow_nan=False), min_size=1, max_size=80)


def _fed(values) -> SpendTiers:
    tiers = SpendTiers()
    for v in values:
        tiers.update(v)
    return tiers


@settings(max_examples=60, deadline=None)
@given(spends, st.lists(st.floats(0, 2e5, allow_nan=False), min_size=2, max_size=20))
def test_tiers_are_monotone_in_value(history, queries):
    tiers = _fed(history)
    bounds = tiers.thresholds
    assert bounds is not None and list(bounds) == sorted(bounds)
    ranks = [TIERS.index(tiers.tier(q)) for q in sorted(queries)]
    assert ranks == sorted(ranks)


def test_shop_agnostic_price_level():
    """A shop with every price 1024x higher gets the same tiers (P² is scale-equivariant)."""
    rng = random.Random(0)
    values = [rng.lognormvariate(3, 1) for _ in range(500)]
    cheap, dear = _fed(values), _fed([v * 1024 for v in values])
    for v in values[:100]:
        assert cheap.tier(v) == dear.tier(v * 1024)


def test_proportions_on_a_large_sample():
    rng = random.Random(1)
    values = [rng.lognormvariate(4, 1.2) for _ in range(5000)]
    tiers = _fed(values)
    share = {t: sum(tiers.tier(v) == t for v in values) / len(values) for t in TIERS}
    assert abs(share["low"] - 0.5) < 0.03
    assert abs(share["mid"] - 0.3) < 0.03
    assert abs(share["high"] - 0.15) < 0.03
    assert abs(share["top"] - 0.05) < 0.02


def test_a_mass_of_zero_spend_is_low():
    tiers = _fed([0.0] * 70 + [float(v) for v in range(1, 31)])
    assert tiers.tier(0.0) == "low"
    assert tiers.tier(1e6) == "top"


def test_before_any_and_few_observations():
    tiers = SpendTiers()
    assert tiers.tier(1e9) == "low" and tiers.thresholds is None and tiers.n == 0
    tiers.update(10.0)
    assert tiers.n == 1 and tiers.tier(10.0) == "low" and tiers.tier(11.0) == "top"


def test_pickle_round_trip():
    tiers = _fed([1.0, 5.0, 3.0, 8.0, 2.0, 9.0])
    clone = pickle.loads(pickle.dumps(tiers))
    for v in (4.0, 7.0, 100.0):
        clone.update(v)
        tiers.update(v)
    assert clone.thresholds == tiers.thresholds
