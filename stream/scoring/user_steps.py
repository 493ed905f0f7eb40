"""One user's step of ``Scorer.finish``: what their events reveal about earlier predictions
(``reveal``), the learners learning it (``learn``), then their scores and messages
(``score_user``): churn, purchase power, interest, cart recommendations and an offer.

``Scorer`` runs these on a working copy of the user's scoring state and owns what happens when
one raises (``stream.scoring.engine``); here they only compute and change that copy and the
partition's learners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.contract.events import CartChange, Click, Event, Order
from stream.features.schema import FEATURE_NAMES
from stream.features.state import current_profile
from stream.models.inputs import category_bucket
from stream.scoring.batch import (
    DAY_MS,
    Cart,
    Inferred,
    Prepared,
    ScoreResult,
    ScoringConfig,
    UserInput,
)
from stream.scoring.churn_input import churn_inputs
from stream.scoring.pending import (
    PendingInterest,
    PendingOffer,
    add_churn_prediction,
    churn_prediction_wanted,
    resolve_churn,
    resolve_interest,
    resolve_offer,
)
from stream.scoring.state import Learners
from stream.scoring.user_scores import UserScores

__all__ = ["BtydView", "horizon_label", "learn", "reveal", "score_user"]


@dataclass(frozen=True)
class BtydView:
    """What the partition's BTYD expert says of one customer (``stream.scoring.online_btyd``)."""

    p_alive: float
    #: Horizon label (``horizon_label``) -> probability of no order within it.
    churn: dict[str, float]
    #: Over ``ScoringConfig.clv_period_ms``; None in a churn-only score.
    expected_orders: float | None
    clv: float | None
    #: What the churn blend takes from the expert at the primary horizon
    #: (``BtydPrediction.blend``): P(no order), P(alive), expected orders.
    blend_input: tuple[float, float, float]

    def churn_component(self) -> dict[str, Any]:
        return {
            "p_alive": round(self.p_alive, 6),
            "churn": {label: round(p, 6) for label, p in self.churn.items()},
        }

    def horizons(self, p_churn: float, labels: list[str]) -> dict[str, float]:
        """The published churn probability at each horizon. The blend says ``p_churn`` for the
        primary horizon t1, where the expert says S(t1) (its probability of no order within
        t1); the expert says how that probability goes on from there:

        - past t1, P(no order within h) = ``p_churn`` * S(h) / S(t1), the expert's chance of
          still no order by h given none by t1;
        - before t1, P(an order within h) = (1 - ``p_churn``) * (1 - S(h)) / (1 - S(t1)), its
          chance that an order by t1 comes by h.

        So the blend corrects the near term, a longer horizon never has the higher churn, and
        the primary one equals ``churn_probability``. (A shift of the expert's logits by the
        blend's correction, as before, carried an early, uncalibrated ONNX opinion whole to
        180 days: on the orders-only log its 180-day Brier score was 0.324, now 0.240.)

        >>> view = BtydView(0.8, {"7d": 0.9, "30d": 0.5, "90d": 0.3}, None, None, (0.5, 0.8, 0.7))
        >>> {k: round(v, 3) for k, v in view.horizons(0.6, ["7d", "30d", "90d"]).items()}
        {'7d': 0.92, '30d': 0.6, '90d': 0.36}
        """
        s1 = self.blend_input[0]
        out: dict[str, float] = {}
        for label in labels:
            s = self.churn[label]
            if s <= s1:
                out[label] = p_churn * (s / s1 if s1 > 0.0 else 1.0)
            else:
                out[label] = 1.0 - (1.0 - p_churn) * ((1.0 - s) / (1.0 - s1) if s1 < 1.0 else 1.0)
        return out


def horizon_label(ms: int) -> str:
    """``30d`` for 30 days, ``36h`` for 36 hours, ``90m`` below an hour.

    >>> horizon_label(30 * 86_400_000), horizon_label(36 * 3_600_000), horizon_label(5_400_000)
    ('30d', '36h', '90m')
    """
    for unit, label in ((DAY_MS, "d"), (3_600_000, "h"), (60_000, "m")):
        if ms % unit == 0:
            return f"{ms // unit}{label}"
    return f"{ms}ms"


def reveal(
    config: ScoringConfig, scores: UserScores, events: list[Event], at_ms: int
) -> list[tuple[str, tuple[Any, ...]]]:
    """What a user's events (or event time alone) reveal about earlier predictions, in
    the order they are to be learned (before new predictions are made). Changes only
    ``scores`` (the delivered predictions leave it), never a learner."""
    labels: list[tuple[str, tuple[Any, ...]]] = []
    moments: list[tuple[int, int | None, str | None]] = [
        (e.ts, e.ts if isinstance(e, Order) else None, _category_of(e)) for e in events
    ] or [(at_ms, None, None)]
    for now, order_ts, category in moments:
        for vector, p_onnx, y, btyd, said in resolve_churn(
            scores.churn_pending,
            order_ts=order_ts,
            now_ts=now,
            horizon_ms=config.churn_horizon_ms,
        ):
            x = churn_inputs(vector, p_onnx, btyd)  # type: ignore[arg-type]
            labels.append(("churn", (x, p_onnx, y, None if btyd is None else btyd[0], said)))
        if category is not None:
            label = resolve_interest(scores.interest_pending, category=category, ts=now)
            if label is not None:
                labels.append(("interest", label))
                scores.interest_pending = None
        reward = resolve_offer(
            scores.offer_pending,
            order_ts=order_ts,
            now_ts=now,
            window_ms=config.offer_window_ms,
        )
        if reward is not None:
            offer = PendingOffer.from_dict(scores.offer_pending or {})
            labels.append(("offers", (offer.context, offer.arm, reward)))
            scores.offer_pending = None
    return labels


def _category_of(event: Event) -> str | None:
    if isinstance(event, Click) or (isinstance(event, CartChange) and event.action == "add"):
        return event.category
    if isinstance(event, Order) and event.items:
        return event.items[0].category
    return None


def learn(
    labels: list[tuple[str, tuple[Any, ...]]],
    learners: Learners,
    partition: int,
    result: ScoreResult,
) -> None:
    for learner, label in labels:
        if learner == "churn":
            x, p_onnx, y, p_btyd, said = label
            if learners.churn.learn(x, p_onnx, y, p_btyd, said):
                result.drifts.append(("churn", partition))
        elif learner == "interest":
            candidates, ranked, next_category = label
            learners.interest.record_hit(ranked, next_category)
            learners.interest.learn(candidates, next_category)
        else:
            context, arm, reward = label
            learners.offers.learn(context, arm, reward)
        result.count(learner)


def score_user(
    config: ScoringConfig,
    index: int,
    user: UserInput,
    learners: Learners,
    prepared: Prepared,
    inferred: Inferred,
    recs: tuple[Cart, np.ndarray] | None,
    versions: dict[str, str],
    result: ScoreResult,
    *,
    said: list[float | None] | None = None,
    btyd: BtydView | None = None,
) -> None:
    """The user's messages (into ``result``) from the batch's ``index``-th row, and the
    predictions they leave pending in ``user.scores`` to be labelled later. ``said`` is the
    published churn probability and the blend's experts' (``PendingChurn.said``) when the
    batch's were computed at once; else they are predicted here."""
    scores = user.scores
    vector = prepared.vectors[index]
    p_onnx = float(inferred.churn[index])
    view = btyd.blend_input if btyd is not None else None
    if said is None:
        blend = learners.churn
        experts = blend.experts(
            churn_inputs(vector, p_onnx, view), p_onnx, None if view is None else view[0]
        )
        said = [blend.combine(p_onnx, *experts), *experts]
    p_churn = float(said[0])  # type: ignore[arg-type]
    if churn_prediction_wanted(
        scores.churn_pending, user.at_ms, every_ms=config.churn_label_every_ms
    ):
        pending_before = len(scores.churn_pending)
        add_churn_prediction(
            scores.churn_pending,
            user.at_ms,
            prepared.stored(index),
            p_onnx,
            every_ms=config.churn_label_every_ms,
            max_pending=config.churn_horizon_ms // config.churn_label_every_ms + 1,
            # 4 decimals: plenty for a label, and small in the changelog.
            btyd=None if view is None else [round(v, 4) for v in view],
            said=[round(float(said[0]), 4), round(float(said[2]), 4)],  # type: ignore[arg-type]
        )
        if len(scores.churn_pending) > pending_before:
            due = user.at_ms + config.churn_horizon_ms
            result.due.append((user.partition, due, user.user_id))
    online_version = f"river-churn-p{user.partition}-n{learners.churn.labels_seen}"
    head = {"user_id": user.user_id, "ts": user.at_ms, "trigger": user.trigger}
    _w_calibrated, w_online, w_btyd = learners.churn.shares(btyd is not None)
    churn_msg = {
        **head,
        "churn_probability": round(p_churn, 6),
        "horizon_days": config.churn_horizon_ms / DAY_MS,
        "p_alive": round(btyd.p_alive, 6) if btyd is not None else None,
        "horizons": _horizons(config, p_churn, btyd),
        "components": {
            "onnx": round(p_onnx, 6),
            # What the online stacker said (whatever its weight), for judging each expert.
            "online": round(float(said[2]), 6),  # type: ignore[arg-type]
            "weight_online": round(w_online, 4),
            "weight_btyd": round(w_btyd, 4),
            # The partition's BTYD expert as it is; null before a first order.
            "btyd": btyd.churn_component() if btyd is not None else None,
        },
        "models": {"onnx": versions["churn"], "online": online_version},
    }
    _emit(result, scores, "scores.churn", churn_msg)
    if prepared.churn_only:
        return
    assert inferred.spend is not None and inferred.interest is not None
    spend = max(0.0, float(inferred.spend[index]))
    learners.tiers.update(spend)
    _emit(
        result,
        scores,
        "scores.purchase_power",
        {
            **head,
            "expected_spend_30d": round(spend, 2),
            "tier": learners.tiers.tier(spend),
            # The BTYD expert's, over clv_days; null before a first order.
            "expected_orders": _rounded(btyd.expected_orders if btyd else None, 4),
            "clv": _rounded(btyd.clv if btyd else None, 2),
            "clv_days": config.clv_period_ms / DAY_MS,
            "models": {"onnx": versions["purchase_power"], "online": "river-tiers"},
        },
    )
    ranked = _interest(config, user, inferred.interest[index], learners)
    _emit(
        result,
        scores,
        "scores.interest",
        {
            **head,
            "top_categories": [{"category": c, "p": round(p, 6)} for c, p in ranked],
            "models": {
                "onnx": versions["interest"],
                "online": f"river-interest-p{user.partition}",
            },
        },
    )
    if recs is not None:
        cart, model_scores = recs
        items = _rank_recs(config, cart, model_scores)
        _emit(
            result,
            scores,
            "recs.cart",
            {
                **head,
                "items": [{"item_id": i, "score": round(s, 6)} for i, s in items],
                "models": {"onnx": versions["cart_recs"], "online": "cooccurrence"},
            },
        )
    offer_models = {
        "onnx": {"churn": versions["churn"], "purchase_power": versions["purchase_power"]},
        "online": "river-linucb",
    }
    _offer(config, user, learners, p_churn, spend, vector, {**head, "models": offer_models}, result)
    _learn_cooccurrence(config, user, learners)


def _horizons(config: ScoringConfig, p_churn: float, btyd: BtydView | None) -> dict[str, Any]:
    """Churn per configured horizon: the primary one is ``churn_probability``; the others need
    the BTYD expert (``BtydView.horizons``), and are null for a user it has no view of."""
    labels = [horizon_label(ms) for ms in config.churn_horizons_ms]
    primary = horizon_label(config.churn_horizon_ms)
    carried = btyd.horizons(p_churn, labels) if btyd is not None else {}
    out: dict[str, float | None] = {}
    for label in labels:
        p = p_churn if label == primary else carried.get(label)
        out[label] = None if p is None else round(p, 6)
    return out


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None or value != value else round(value, digits)


def _interest(
    config: ScoringConfig, user: UserInput, probs: np.ndarray, learners: Learners
) -> list[tuple[str, float]]:
    profile = current_profile(user.state, config.features)
    affinity = profile.affinity
    affinity_total = sum(affinity.values()) or 1.0
    recent = profile.recent_categories
    last = recent[-1] if recent else None
    names = set(affinity) | set(recent)
    if not names:
        return []
    onnx = {c: float(probs[category_bucket(c)]) for c in names}
    onnx_total = sum(onnx.values()) or 1.0
    candidates = {
        c: {
            "onnx_p": onnx[c] / onnx_total,
            "affinity_share": affinity.get(c, 0.0) / affinity_total,
            "recent_share": recent.count(c) / len(recent) if recent else 0.0,
            "is_last": float(c == last),
        }
        for c in sorted(names)
    }
    ranked = learners.interest.rank(candidates, config.interest_k)
    user.scores.interest_pending = PendingInterest(
        user.at_ms, [c for c, _p in ranked], candidates
    ).to_dict()
    return ranked


def _rank_recs(
    config: ScoringConfig, cart: Cart, model_scores: np.ndarray
) -> list[tuple[str, float]]:
    """The model's score of each candidate blended with its co-occurrence weight relative to
    the cart's strongest neighbour."""
    cooc = cart.neighbours
    top = max(cooc.values(), default=0.0) or 1.0
    w = config.recs_model_weight
    scored = [
        (item, w * float(s) + (1 - w) * cooc.get(item, 0.0) / top)
        for item, s in zip(cart.candidates.items, model_scores, strict=True)
    ]
    scored.sort(key=lambda kv: (-kv[1], kv[0]))
    return scored[: config.recs_k]


def _offer(
    config: ScoringConfig,
    user: UserInput,
    learners: Learners,
    p_churn: float,
    spend: float,
    vector: list[float],
    head: dict[str, Any],
    result: ScoreResult,
) -> None:
    """``head`` carries ``models``: the ONNX versions behind the context (churn and purchase
    power) and the bandit."""
    scores = user.scores
    if scores.offer_pending is not None:
        return
    last = scores.last_offer_ts
    if last is not None and user.at_ms - last < config.offer_cooldown_ms:
        return
    if not learners.offers.eligible(p_churn, spend):
        return
    context = {
        "churn": p_churn,
        "log_spend": math.log1p(spend),
        "log_orders": math.log1p(vector[FEATURE_NAMES.index("orders_total")]),
        "bias": 1.0,
    }
    arm, propensity = learners.offers.choose(context)
    scores.offer_pending = PendingOffer(
        user.at_ms, arm, propensity, context, learners.offers.cost(arm)
    ).to_dict()
    scores.last_offer_ts = user.at_ms
    result.due.append((user.partition, user.at_ms + config.offer_window_ms, user.user_id))
    _emit(
        result,
        scores,
        "offers",
        {
            **head,
            "offer": learners.offers.offer_payload(arm),
            "propensity": round(propensity, 6),
        },
    )


def _learn_cooccurrence(config: ScoringConfig, user: UserInput, learners: Learners) -> None:
    """Items ordered together, and each item added with what was already in the cart
    (only the new item's pairs, so a cart's older pairs are not counted again)."""
    cart = current_profile(user.state, config.features).cart
    for event in user.events:
        if isinstance(event, Order) and len(event.items) > 1:
            learners.cooccurrence.update([line.item_id for line in event.items], event.ts)
        elif isinstance(event, CartChange) and event.action == "add":
            learners.cooccurrence.update(
                sorted(set(cart) | {event.item_id}), event.ts, added=[event.item_id]
            )


def _emit(result: ScoreResult, scores: UserScores, topic: str, value: dict[str, Any]) -> None:
    scores.latest[topic] = value
    result.messages.append((topic, value["user_id"], value))
