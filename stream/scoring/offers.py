"""Which offer to show a user at risk: a contextual bandit with a known propensity per choice.

Only users for whom an offer can pay off are eligible (``eligible``): churn risk of at least
``min_churn`` (an offer to a loyal customer only gives margin away) and expected spend above
``min_spend`` (someone who would spend nothing is not worth the cost). ``min_spend`` is in the
shop's currency; 0 by default (any positive expected spend) because price levels differ per
shop — a caller wanting a relative floor can pass e.g. the running median from ``SpendTiers``.

Among the configured arms (``"none"`` is the control and should stay in the list), River's
``bandit.LinUCBDisjoint`` (one Bayesian linear regression per arm over the context) gives each
arm an upper confidence bound, the greedy arm is the one with the highest bound, and an
epsilon-greedy layer on top explores with a seeded ``random.Random``. So every choice has a
known propensity, published with it for off-policy evaluation downstream:

* the greedy arm: ``(1 - epsilon) + epsilon / K``
* any other arm: ``epsilon / K``

When several arms tie for the highest bound (always so before any reward: every arm starts
from the same prior), the greedy arm is drawn uniformly among the ``T`` tied arms, and each tied
arm's propensity is ``(1 - epsilon) / T + epsilon / K`` — the true probability of showing it, not
the one a deterministic greedy choice would have.

The reward, computed by the caller once the offer window has passed in event time, is
``1`` if the user ordered within the window (else ``0``) minus the arm's cost (``costs``, in
units of one order's value: 10% off costs 0.1). The bandit therefore learns the uplift net of
what the offer gives away, against the "none" control.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from river import bandit, base

__all__ = ["DEFAULT_ARMS", "DEFAULT_COSTS", "OfferPolicy"]

DEFAULT_ARMS: tuple[str, ...] = ("none", "free_shipping", "5_percent", "10_percent")
DEFAULT_COSTS: dict[str, float] = {
    "none": 0.0,
    "free_shipping": 0.05,
    "5_percent": 0.05,
    "10_percent": 0.1,
}

_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)_percent$")
_BIAS = "_bias"  # LinUCB's regressions have no intercept: a constant feature gives them one


class OfferPolicy(base.Base):
    """Epsilon-greedy over LinUCB (disjoint) for choosing an offer, with propensities.

    Parameters
    ----------
    arms
        Offer ids. ``N_percent`` means N% off; ``free_shipping`` is free shipping; ``none`` is no
        offer (the control); any other id is published with its id as kind and no value.
    costs
        Arm -> cost in units of one order (default ``DEFAULT_COSTS``); every arm needs one.
    epsilon
        Exploration probability.
    alpha, beta
        Prior and noise precision of LinUCB's Bayesian regressions (beta = 4: rewards are
        about Bernoulli, whose variance is at most 1/4).
    min_churn
        Least churn probability for an offer.
    min_spend
        Expected spend must be above this (shop currency).
    seed
        Seeds exploration and the draw among tied greedy arms.

    Examples
    --------
    >>> policy = OfferPolicy(seed=1)
    >>> policy.eligible(churn_p=0.6, expected_spend=80.0), policy.eligible(0.1, 80.0)
    (True, False)
    >>> policy.choose({"churn_p": 0.6})  # no reward yet: all four arms tie
    ('none', 0.25)
    >>> for _ in range(20):
    ...     policy.learn({"churn_p": 0.6}, "free_shipping", reward=1.0 - policy.cost("free_shipping"))
    ...     policy.learn({"churn_p": 0.6}, "none", reward=0.0)
    >>> policy.choose({"churn_p": 0.6})  # greedy: (1 - 0.1) + 0.1 / 4
    ('free_shipping', 0.925)
    >>> policy.offer_payload("10_percent"), policy.offer_payload("none")
    ({'id': '10_percent', 'kind': 'percent_off', 'value': 10}, None)
    """

    def __init__(
        self,
        *,
        arms: Sequence[str] = DEFAULT_ARMS,
        costs: Mapping[str, float] | None = None,
        epsilon: float = 0.1,
        alpha: float = 1.0,
        beta: float = 4.0,
        min_churn: float = 0.3,
        min_spend: float = 0.0,
        seed: int = 0,
    ) -> None:
        arms = tuple(arms)
        if not arms or len(set(arms)) != len(arms):
            raise ValueError("arms must be a non-empty sequence of distinct ids")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")
        costs = dict(DEFAULT_COSTS if costs is None else costs)
        missing = [a for a in arms if a not in costs]
        if missing:
            raise ValueError(f"no cost for offer(s) {missing}")
        self.arms = arms
        self.costs = costs
        self.epsilon = epsilon
        self.alpha = alpha
        self.beta = beta
        self.min_churn = min_churn
        self.min_spend = min_spend
        self.seed = seed

        self._rng = random.Random(seed)
        self._bandit = bandit.LinUCBDisjoint(alpha=alpha, beta=beta, seed=seed)

    def eligible(self, churn_p: float, expected_spend: float) -> bool:
        """Whether an offer is worth considering: ``churn_p >= min_churn`` and
        ``expected_spend > min_spend``."""
        return churn_p >= self.min_churn and expected_spend > self.min_spend

    def cost(self, arm: str) -> float:
        return float(self.costs[arm])

    def _context(self, context: Mapping[str, float]) -> dict[str, float]:
        return {**context, _BIAS: 1.0}

    def upper_bounds(self, context: Mapping[str, float]) -> dict[str, float]:
        """LinUCB's upper confidence bound (posterior mean + std) of each arm's reward.

        Computed as ``LinUCBDisjoint.pull`` does, from its per-arm regressions, because the
        propensity needs the whole set of tied best arms, which ``pull`` does not expose."""
        ctx = self._context(context)
        bounds = {}
        for arm in self.arms:
            dist = self._bandit._bayes_lin_regs[arm].predict_one(ctx, with_dist=True)
            bounds[arm] = float(dist.mu + dist.sigma)
        return bounds

    def choose(self, context: Mapping[str, float]) -> tuple[str, float]:
        """The arm to show and the probability with which this policy chose it."""
        bounds = self.upper_bounds(context)
        best = max(bounds.values())
        tied = [arm for arm in self.arms if bounds[arm] == best]
        explore = self._rng.random() < self.epsilon
        if explore:
            arm = self._rng.choice(self.arms)
        else:
            arm = tied[0] if len(tied) == 1 else self._rng.choice(tied)
        propensity = self.epsilon / len(self.arms)
        if arm in tied:
            propensity += (1.0 - self.epsilon) / len(tied)
        return arm, propensity

    def learn(self, context: Mapping[str, float], arm: str, reward: float) -> None:
        """Learn the reward of showing ``arm`` in ``context`` (the context given to ``choose``)."""
        if arm not in self.costs or arm not in self.arms:
            raise ValueError(f"unknown offer {arm!r}")
        self._bandit.update(arm, self._context(context), float(reward))

    def offer_payload(self, arm: str) -> dict[str, Any] | None:
        """The ``offer`` field of an ``offers`` message: None for ``"none"``."""
        if arm not in self.arms:
            raise ValueError(f"unknown offer {arm!r}")
        if arm == "none":
            return None
        match = _PERCENT.match(arm)
        if match:
            number = float(match.group(1))
            value: float | int | None = int(number) if number.is_integer() else number
            return {"id": arm, "kind": "percent_off", "value": value}
        return {"id": arm, "kind": arm, "value": None}
