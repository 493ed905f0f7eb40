"""OfferPolicy: eligibility, epsilon-greedy over LinUCB with exact propensities, payloads."""

from __future__ import annotations

import copy
import pickle
from collections import Counter

import pytest
from river import bandit

from stream.scoring.offers import DEFAULT_ARMS, OfferPolicy

CTX = {"churn": 0.6, "log_spend": 3.0}


def _taught(policy: OfferPolicy, best: str = "free_shipping", n: int = 30) -> OfferPolicy:
    for _ in range(n):
        for arm in policy.arms:
            policy.learn(CTX, arm, (1.0 if arm == best else 0.0) - policy.cost(arm))
    return policy


def test_eligibility_thresholds():
    policy = OfferPolicy(min_churn=0.3, min_spend=10.0)
    assert policy.eligible(0.3, 10.01)
    assert not policy.eligible(0.29, 100.0)
    assert not policy.eligible(0.9, 10.0)  # spend must be above the floor
    assert OfferPolicy().eligible(0.5, 0.01) and not OfferPolicy().eligible(0.5, 0.0)


def test_propensities_of_ties_and_of_a_unique_greedy_arm():
    policy = OfferPolicy(epsilon=0.2)
    untaught = {policy.choose(CTX) for _ in range(50)}
    assert {arm for arm, _p in untaught} == set(DEFAULT_ARMS)  # drawn among the tied arms
    assert all(p == pytest.approx(0.8 / 4 + 0.05) for _arm, p in untaught)  # = 1 / K
    _taught(policy)
    seen = {policy.choose(CTX) for _ in range(300)}
    assert {arm for arm, _p in seen} == set(DEFAULT_ARMS)
    for arm, p in seen:
        assert p == pytest.approx(0.85 if arm == "free_shipping" else 0.05)


def test_empirical_frequencies_match_the_propensities():
    policy = _taught(OfferPolicy(epsilon=0.2, seed=3))
    counts: Counter[str] = Counter()
    propensity: dict[str, float] = {}
    n = 4000
    for _ in range(n):
        arm, p = policy.choose(CTX)
        counts[arm] += 1
        propensity[arm] = p
    for arm in DEFAULT_ARMS:
        assert abs(counts[arm] / n - propensity[arm]) < 0.03


def test_greedy_is_linucb_pull():
    """The bounds read from LinUCB's regressions give the arm ``LinUCBDisjoint.pull`` gives
    (guards the private attribute ``upper_bounds`` relies on)."""
    policy = _taught(OfferPolicy(epsilon=0.0))
    bounds = policy.upper_bounds(CTX)
    assert max(bounds, key=bounds.__getitem__) == "free_shipping"
    ctx = policy._context(CTX)
    assert policy._bandit.pull(list(policy.arms), context=ctx) == "free_shipping"
    assert policy.choose(CTX) == ("free_shipping", 1.0)
    assert isinstance(policy._bandit, bandit.LinUCBDisjoint)


def test_learns_the_context_dependent_best_offer():
    policy = OfferPolicy(seed=1)
    low, high = {"churn": 0.3}, {"churn": 1.0}
    for i in range(600):
        ctx = low if i % 2 else high
        arm, _p = policy.choose(ctx)
        converts = (arm == "10_percent") if ctx is high else (arm == "none")
        policy.learn(ctx, arm, float(converts) - policy.cost(arm))
    bounds_high, bounds_low = policy.upper_bounds(high), policy.upper_bounds(low)
    assert max(bounds_high, key=bounds_high.__getitem__) == "10_percent"
    assert max(bounds_low, key=bounds_low.__getitem__) == "none"


def test_offer_payloads():
    policy = OfferPolicy(
        arms=("none", "free_shipping", "5_percent", "2.5_percent", "gift"),
        costs={
            "none": 0,
            "free_shipping": 0.05,
            "5_percent": 0.05,
            "2.5_percent": 0.025,
            "gift": 0.2,
        },
    )
    assert policy.offer_payload("none") is None
    assert policy.offer_payload("free_shipping") == {
        "id": "free_shipping",
        "kind": "free_shipping",
        "value": None,
    }
    assert policy.offer_payload("5_percent") == {
        "id": "5_percent",
        "kind": "percent_off",
        "value": 5,
    }
    assert policy.offer_payload("2.5_percent")["value"] == 2.5
    assert policy.offer_payload("gift") == {"id": "gift", "kind": "gift", "value": None}
    with pytest.raises(ValueError):
        policy.offer_payload("20_percent")


def test_costs_and_config_errors():
    assert OfferPolicy().cost("10_percent") == 0.1 and OfferPolicy().cost("none") == 0.0
    with pytest.raises(ValueError):
        OfferPolicy(arms=("none", "bogo"))  # no cost for "bogo"
    with pytest.raises(ValueError):
        OfferPolicy(arms=("none", "none"))
    with pytest.raises(ValueError):
        OfferPolicy(epsilon=1.5)
    with pytest.raises(ValueError):
        OfferPolicy().learn(CTX, "bogo", 1.0)


def test_pickle_round_trip_and_no_mutation():
    policy = _taught(OfferPolicy(seed=4), n=5)
    ctx = dict(CTX)
    policy.choose(ctx)
    policy.learn(ctx, "none", 0.0)
    assert ctx == CTX
    clone = pickle.loads(pickle.dumps(policy))
    for _ in range(50):
        arm, p = policy.choose(CTX)
        assert clone.choose(CTX) == (arm, p)
        policy.learn(CTX, arm, 0.5)
        clone.learn(CTX, arm, 0.5)
    assert copy.deepcopy(policy).choose(CTX) == policy.choose(CTX)
