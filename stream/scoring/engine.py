"""From the users a micro-batch touched to the messages of the five output topics.

Three steps, so a worker can run the middle one off the event loop: ``prepare`` reads feature
vectors and model inputs for the whole batch (pure Python), ``infer`` makes one onnxruntime
call per model for the whole batch (releases the GIL: the worker runs it in an executor), and
``finish`` delivers delayed labels to the online learners, blends, and builds the messages.
``score`` chains them for offline evaluation, so offline figures come from the same code the
worker runs.

A user is the unit of failure, not the batch: whatever raises while one user is prepared,
inferred, labelled, scored or encoded costs that user's scores of the batch (a ``ScoreFailure``
in ``ScoreResult.failed``) and nothing else. Each user's scoring state is changed on a working
copy and written back only when the user's step succeeded, except that once labels reached the
learners their consumption is written back whatever follows: a retry (the next event, a
redelivery) never teaches a learner the same label twice. The batch keeps one onnxruntime call
per model; only when that call itself fails is each user inferred alone (``infer_isolated``).

Labels are revealed by the stream itself, in event time:

- churn: an order within the horizon after a prediction makes it a negative; the horizon
  passing without an order (seen at the user's next event or at a clock tick) a positive;
- interest: the category of the user's next action;
- offers: an order within the offer window after the offer (reward 1 minus the offer's cost),
  else minus its cost once the window has passed (``pending.resolve_offer``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from stream.events import CartChange, Click, Event, Order
from stream.features import FeatureConfig, UserState, feature_vector
from stream.features.profile import Profile
from stream.features.schema import FEATURE_NAMES
from stream.features.state import current_profile
from stream.models.inputs import (
    SEQ_LEN,
    Candidates,
    cart_candidates,
    category_bucket,
    category_sequence,
    feature_matrix,
)
from stream.models.registry import Model
from stream.scoring.pending import (
    PendingChurn,
    PendingInterest,
    PendingOffer,
    add_churn_prediction,
    resolve_churn,
    resolve_interest,
    resolve_offer,
)
from stream.scoring.state import Learners, UserScores

__all__ = [
    "OUTPUT_TOPICS",
    "ScoreFailure",
    "ScoreResult",
    "Scorer",
    "ScoringConfig",
    "ScoringFailed",
    "UserInput",
    "churn_inputs",
]

OUTPUT_TOPICS = ("scores.interest", "scores.churn", "scores.purchase_power", "recs.cart", "offers")
DAY_MS = 86_400_000


@dataclass(frozen=True)
class ScoringConfig:
    """Scoring knobs (``SHOPSCORE_CHURN_HORIZON``, ``_OFFER_WINDOW``... in ``Settings``)."""

    churn_horizon_ms: int = 30 * DAY_MS
    interest_k: int = 5
    recs_k: int = 10
    offer_window_ms: int = 7 * DAY_MS
    offer_cooldown_ms: int = 7 * DAY_MS
    #: At most one churn prediction per user per this much event time awaits its label: each
    #: user then holds about horizon / this of them (a 45-float vector each) in the changelog.
    churn_label_every_ms: int = 3 * DAY_MS
    #: Weight of the ONNX model in a recommendation's score; the rest is co-occurrence.
    recs_model_weight: float = 0.5
    features: FeatureConfig = field(default_factory=FeatureConfig)


@dataclass
class UserInput:
    """One user to score: their state, their scoring state, and what happened in the batch."""

    user_id: str
    partition: int
    state: UserState
    scores: UserScores
    #: Events of this user applied in this batch, in event-time order (empty for a clock tick).
    events: list[Event]
    #: The event time the scores are valid for.
    at_ms: int
    #: Id of the event that triggered scoring, or ``"clock"``.
    trigger: str


@dataclass
class ScoreFailure:
    """One user whose scoring raised: they get no scores from this batch."""

    user_id: str
    partition: int
    #: Where it raised: ``prepare``, ``infer``, ``labels`` (delivering labels to the learners),
    #: ``score`` (predicting and building messages), ``encode`` (serializing them), ``write``
    #: (the worker's table write).
    stage: str
    error: BaseException
    #: Whether the user's scoring state was written back anyway (labels the learners already
    #: learned are consumed, so a retry cannot learn them twice).
    committed: bool = False


@dataclass
class Prepared:
    users: list[UserInput]
    churn_only: bool
    #: The models this batch is scored with, fixed at ``prepare`` so a swap mid-batch can't mix.
    models: dict[str, Model]
    features: np.ndarray
    vectors: list[list[float]]
    sequences: np.ndarray | None = None
    #: (index of user, candidates) for users who added to their cart in this batch.
    carts: list[tuple[int, Candidates]] = field(default_factory=list)
    #: Users left out of ``users`` because preparing (or inferring) them raised.
    failed: list[ScoreFailure] = field(default_factory=list)

    def subset(self, indices: Sequence[int]) -> Prepared:
        """The batch restricted to ``users[i] for i in indices`` (in that order)."""
        position = {index: n for n, index in enumerate(indices)}
        rows = np.asarray(indices, dtype=np.intp)
        return Prepared(
            [self.users[i] for i in indices],
            self.churn_only,
            self.models,
            self.features[rows] if len(indices) else self.features[:0],
            [self.vectors[i] for i in indices],
            self.sequences[rows] if self.sequences is not None else None,
            [(position[i], c) for i, c in self.carts if i in position],
            list(self.failed),
        )


@dataclass
class Inferred:
    churn: np.ndarray
    spend: np.ndarray | None = None
    interest: np.ndarray | None = None
    recs: np.ndarray | None = None
    #: Seconds per model call.
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def concat(cls, parts: Sequence[Inferred]) -> Inferred:
        """Per-user inferences joined back into the batch's, rows in order."""

        def join(arrays: list[np.ndarray | None]) -> np.ndarray | None:
            present = [a for a in arrays if a is not None]
            return np.concatenate(present) if present else None

        seconds: dict[str, float] = {}
        for part in parts:
            for name, value in part.seconds.items():
                seconds[name] = seconds.get(name, 0.0) + value
        churn = join([p.churn for p in parts])
        return cls(
            churn if churn is not None else np.zeros(0, np.float32),
            join([p.spend for p in parts]),
            join([p.interest for p in parts]),
            join([p.recs for p in parts]),
            seconds,
        )


class ScoringFailed(Exception):
    """``Scorer.score(strict=True)``: some users of the batch could not be scored."""

    def __init__(self, failures: list[ScoreFailure]) -> None:
        first = failures[0]
        super().__init__(
            f"{len(failures)} users could not be scored; first {first.user_id!r} at "
            f"{first.stage}: {type(first.error).__name__}: {first.error}"
        )
        self.failures = failures


@dataclass
class ScoreResult:
    #: (output topic, key, value) in the order they should be sent.
    messages: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    #: ``messages[i]``'s value serialized (orjson), ready to send.
    payloads: list[bytes] = field(default_factory=list)
    #: Labels delivered, per learner.
    labels: dict[str, int] = field(default_factory=dict)
    #: (learner, partition) for every drift detected in this batch.
    drifts: list[tuple[str, int]] = field(default_factory=list)
    #: Partitions whose learners changed (to checkpoint).
    partitions: set[int] = field(default_factory=set)
    #: (partition, event time, user) at which a new pending label falls due.
    due: list[tuple[int, int, str]] = field(default_factory=list)
    #: Users who got no scores from this batch (prepare, infer and finish failures alike).
    failed: list[ScoreFailure] = field(default_factory=list)
    #: Users whose scoring state changed and is to be written (scored, or labels consumed).
    changed: list[UserInput] = field(default_factory=list)

    def count(self, learner: str, n: int = 1) -> None:
        self.labels[learner] = self.labels.get(learner, 0) + n


#: Features that describe the moment rather than the customer: at an event the user is always
#: in a session (with a cart being filled), at a clock tick never. A learner that only saw
#: them constant would read an idle user's 0 as dozens of standard deviations away.
MOMENT_FEATURES = frozenset(
    {"session_active", "session_minutes", "session_events", "cart_items", "cart_value"}
    | {name for name in FEATURE_NAMES if name.endswith("_1h")}
)
_CHURN_INPUTS = tuple(
    (index, name) for index, name in enumerate(FEATURE_NAMES) if name not in MOMENT_FEATURES
)


def churn_inputs(vector: Sequence[float], p_onnx: float) -> dict[str, float]:
    """The online churn learner's input: the customer's features on a signed log scale (a
    shop's counts, prices and gaps differ by orders of magnitude from another's; logs make them
    comparable) and the ONNX model's logit, whose weight the learner fits to this shop."""
    x = {
        name: math.copysign(math.log1p(abs(vector[index])), vector[index])
        for index, name in _CHURN_INPUTS
    }
    p = min(max(p_onnx, 1e-6), 1 - 1e-6)
    x["onnx_logit"] = math.log(p / (1 - p))
    return x


class Scorer:
    """Scores batches with a set of ONNX models; swap ``models`` between batches."""

    def __init__(self, models: dict[str, Model], config: ScoringConfig | None = None) -> None:
        self.models = models
        self.config = config or ScoringConfig()

    def versions(self) -> dict[str, str]:
        return {name: model.version for name, model in self.models.items()}

    # -- step 1 ---------------------------------------------------------------------------

    def prepare(
        self, users: list[UserInput], learners_of: Callable[[int], Learners], churn_only: bool
    ) -> Prepared:
        """Feature rows (and, for a full score, category sequences and cart candidates) of the
        batch; shop popularity learns the batch's events. A user whose preparation raises is
        left out (``Prepared.failed``)."""
        cfg = self.config.features
        kept: list[UserInput] = []
        vectors: list[list[float]] = []
        sequences: list[list[int]] = []
        carts: list[tuple[int, Candidates]] = []
        failed: list[ScoreFailure] = []
        for user in users:
            try:
                vector = feature_vector(user.state, user.at_ms, cfg)
                if len(vector) != len(FEATURE_NAMES):
                    raise ValueError(f"{len(vector)} features, expected {len(FEATURE_NAMES)}")
                if not churn_only:
                    profile = current_profile(user.state, cfg)
                    sequence = category_sequence(profile)
                    learners = learners_of(user.partition)
                    for event in user.events:
                        learners.popularity.observe(event)
                    cart = self._cart(user, profile, learners)
            except Exception as exc:
                failed.append(ScoreFailure(user.user_id, user.partition, "prepare", exc))
                continue
            if not churn_only:
                if cart is not None:
                    carts.append((len(kept), cart))
                sequences.append(sequence)
            kept.append(user)
            vectors.append(vector)
        prepared = Prepared(kept, churn_only, self.models, feature_matrix(vectors), vectors)
        if not kept:
            prepared.features = np.zeros((0, len(FEATURE_NAMES)), np.float32)
        prepared.failed = failed
        if not churn_only:
            prepared.sequences = np.asarray(sequences, np.int32).reshape(len(kept), SEQ_LEN)
            prepared.carts = carts
        return prepared

    def _cart(self, user: UserInput, profile: Profile, learners: Learners) -> Candidates | None:
        """Candidates for the user's cart when they added to it in this batch."""
        if not any(isinstance(e, CartChange) and e.action == "add" for e in user.events):
            return None
        if not profile.cart:
            return None
        extra = learners.cooccurrence.candidates(
            sorted(profile.cart),
            self.config.recs_k * 2,
            now_ms=user.at_ms,
            exclude=set(profile.cart),
        )
        candidates = cart_candidates(
            profile, learners.popularity, user.at_ms, extra_items=[item for item, _w in extra]
        )
        return candidates if candidates.items else None

    # -- step 2 (thread-safe: onnxruntime only) -------------------------------------------

    def infer(self, prepared: Prepared) -> Inferred:
        models = prepared.models
        features = prepared.features
        if not len(features):
            return Inferred(churn=np.zeros(0, np.float32))
        timer = _Timer()
        out = Inferred(churn=timer.run("churn", models["churn"].predict, features))
        if not prepared.churn_only and len(features):
            out.spend = timer.run("purchase_power", models["purchase_power"].predict, features)
            interest = models["interest"]
            feed = _feed(interest, features=features, sequence=prepared.sequences)
            out.interest = timer.run("interest", interest.predict, feed)
            if prepared.carts:
                rows = [c.inputs() for _i, c in prepared.carts]
                recs = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
                out.recs = timer.run("cart_recs", models["cart_recs"].predict, recs)
        out.seconds = timer.seconds
        return out

    def infer_isolated(self, prepared: Prepared) -> tuple[Prepared, Inferred]:
        """``infer`` for the whole batch (one call per model); only if that raises, each user
        alone, so the users whose rows fail are left out (``Prepared.failed``) and the others
        are scored. Returns the batch that was inferred and its inference."""
        try:
            return prepared, self.infer(prepared)
        except Exception:
            pass
        parts: list[Inferred] = []
        keep: list[int] = []
        failed = list(prepared.failed)
        for index, user in enumerate(prepared.users):
            try:
                parts.append(self.infer(prepared.subset([index])))
            except Exception as exc:
                failed.append(ScoreFailure(user.user_id, user.partition, "infer", exc))
            else:
                keep.append(index)
        narrowed = prepared.subset(keep)
        narrowed.failed = failed
        return narrowed, Inferred.concat(parts)

    # -- step 3 ---------------------------------------------------------------------------

    def finish(
        self, prepared: Prepared, inferred: Inferred, learners_of: Callable[[int], Learners]
    ) -> ScoreResult:
        """Deliver labels, blend and build every user's messages, one user at a time: a user
        whose step raises is a ``ScoreFailure`` and the others go on (module docstring)."""
        result = ScoreResult(failed=list(prepared.failed))
        versions = {name: model.version for name, model in prepared.models.items()}
        recs_offset = 0
        recs_rows: dict[int, tuple[Candidates, int, int]] = {}
        for index, candidates in prepared.carts:
            stop = recs_offset + len(candidates.items)
            recs_rows[index] = (candidates, recs_offset, stop)
            recs_offset = stop
        for index, user in enumerate(prepared.users):
            try:
                learners = learners_of(user.partition)
            except Exception as exc:
                result.failed.append(ScoreFailure(user.user_id, user.partition, "labels", exc))
                continue
            result.partitions.add(user.partition)
            recs = None
            if index in recs_rows and inferred.recs is not None:
                candidates, start, stop = recs_rows[index]
                recs = (candidates, inferred.recs[start:stop])
            self._finish_user(index, user, learners, prepared, inferred, recs, versions, result)
        return result

    def _finish_user(
        self,
        index: int,
        user: UserInput,
        learners: Learners,
        prepared: Prepared,
        inferred: Inferred,
        recs: tuple[Candidates, np.ndarray] | None,
        versions: dict[str, str],
        result: ScoreResult,
    ) -> None:
        """One user's labels and scores, on a working copy of their scoring state."""
        scores = user.scores
        mine = ScoreResult()
        after_labels: UserScores | None = None
        stage = "labels"
        try:
            work = _working_copy(scores)
            labels = self._reveal(work, user.events, user.at_ms)
            if labels:  # from here on, the labels count as delivered whatever follows
                after_labels = _working_copy(work)
            self._learn(labels, learners, user.partition, result)
            stage = "score"
            user.scores = work  # what the scoring pieces read and change
            try:
                self._score_user(index, user, learners, prepared, inferred, recs, versions, mine)
            finally:
                user.scores = scores
            stage = "encode"
            payloads = [orjson.dumps(value) for _topic, _key, value in mine.messages]
        except Exception as exc:
            if after_labels is not None:
                _commit(scores, after_labels)
                result.changed.append(user)
            result.failed.append(
                ScoreFailure(user.user_id, user.partition, stage, exc, after_labels is not None)
            )
            return
        _commit(scores, work)
        result.changed.append(user)
        result.messages += mine.messages
        result.payloads += payloads
        result.due += mine.due

    def _score_user(
        self,
        index: int,
        user: UserInput,
        learners: Learners,
        prepared: Prepared,
        inferred: Inferred,
        recs: tuple[Candidates, np.ndarray] | None,
        versions: dict[str, str],
        result: ScoreResult,
    ) -> None:
        scores = user.scores
        vector = prepared.vectors[index]
        p_onnx = float(inferred.churn[index])
        x = churn_inputs(vector, p_onnx)
        p_churn = learners.churn.predict(x, p_onnx)
        pending_before = len(scores.churn_pending)
        add_churn_prediction(
            scores.churn_pending,
            user.at_ms,
            [round(v, 4) for v in vector],
            p_onnx,
            every_ms=self.config.churn_label_every_ms,
            max_pending=self.config.churn_horizon_ms // self.config.churn_label_every_ms + 1,
        )
        if len(scores.churn_pending) > pending_before:
            due = user.at_ms + self.config.churn_horizon_ms
            result.due.append((user.partition, due, user.user_id))
        online_version = f"river-churn-p{user.partition}-n{learners.churn.labels_seen}"
        head = {"user_id": user.user_id, "ts": user.at_ms, "trigger": user.trigger}
        churn_msg = {
            **head,
            "churn_probability": round(p_churn, 6),
            "horizon_days": self.config.churn_horizon_ms / DAY_MS,
            "components": {
                "onnx": round(p_onnx, 6),
                "weight_online": round(learners.churn.weight_online, 4),
            },
            "models": {"onnx": versions["churn"], "online": online_version},
        }
        self._emit(result, scores, "scores.churn", churn_msg)
        if prepared.churn_only:
            return
        assert inferred.spend is not None and inferred.interest is not None
        spend = max(0.0, float(inferred.spend[index]))
        learners.tiers.update(spend)
        self._emit(
            result,
            scores,
            "scores.purchase_power",
            {
                **head,
                "expected_spend_30d": round(spend, 2),
                "tier": learners.tiers.tier(spend),
                "models": {"onnx": versions["purchase_power"], "online": "river-tiers"},
            },
        )
        ranked = self._interest(user, inferred.interest[index], learners)
        self._emit(
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
            candidates, model_scores = recs
            items = self._rank_recs(candidates, model_scores, user, learners)
            self._emit(
                result,
                scores,
                "recs.cart",
                {
                    **head,
                    "items": [{"item_id": i, "score": round(s, 6)} for i, s in items],
                    "models": {"onnx": versions["cart_recs"], "online": "cooccurrence"},
                },
            )
        self._offer(user, learners, p_churn, spend, vector, head, result)
        self._learn_cooccurrence(user, learners)

    def score(
        self,
        users: list[UserInput],
        learners_of: Callable[[int], Learners],
        churn_only: bool,
        *,
        strict: bool = True,
    ) -> ScoreResult:
        """``prepare``, ``infer_isolated`` and ``finish`` in one go (offline evaluation). With
        ``strict``, a user who could not be scored raises ``ScoringFailed`` once the others
        are done: an offline figure must not silently leave users out."""
        if not users:
            return ScoreResult()
        prepared, inferred = self.infer_isolated(self.prepare(users, learners_of, churn_only))
        result = self.finish(prepared, inferred, learners_of)
        if strict and result.failed:
            raise ScoringFailed(result.failed) from result.failed[0].error
        return result

    # -- pieces -----------------------------------------------------------------------------

    @staticmethod
    def _emit(result: ScoreResult, scores: UserScores, topic: str, value: dict[str, Any]) -> None:
        scores.latest[topic] = value
        result.messages.append((topic, value["user_id"], value))

    def _reveal(
        self, scores: UserScores, events: list[Event], at_ms: int
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """What a user's events (or event time alone) reveal about earlier predictions, in
        the order they are to be learned (before new predictions are made). Changes only
        ``scores`` (the delivered predictions leave it), never a learner."""
        labels: list[tuple[str, tuple[Any, ...]]] = []
        moments: list[tuple[int, int | None, str | None]] = [
            (e.ts, e.ts if isinstance(e, Order) else None, _category_of(e)) for e in events
        ] or [(at_ms, None, None)]
        for now, order_ts, category in moments:
            for vector, p_onnx, y in resolve_churn(
                scores.churn_pending,
                order_ts=order_ts,
                now_ts=now,
                horizon_ms=self.config.churn_horizon_ms,
            ):
                x = churn_inputs(vector, p_onnx)  # type: ignore[arg-type]
                labels.append(("churn", (x, p_onnx, y)))
            if category is not None:
                label = resolve_interest(scores.interest_pending, category=category, ts=now)
                if label is not None:
                    labels.append(("interest", label))
                    scores.interest_pending = None
            reward = resolve_offer(
                scores.offer_pending,
                order_ts=order_ts,
                now_ts=now,
                window_ms=self.config.offer_window_ms,
            )
            if reward is not None:
                offer = PendingOffer.from_dict(scores.offer_pending or {})
                labels.append(("offers", (offer.context, offer.arm, reward)))
                scores.offer_pending = None
        return labels

    @staticmethod
    def _learn(
        labels: list[tuple[str, tuple[Any, ...]]],
        learners: Learners,
        partition: int,
        result: ScoreResult,
    ) -> None:
        for learner, label in labels:
            if learner == "churn":
                x, p_onnx, y = label
                if learners.churn.learn(x, p_onnx, y):
                    result.drifts.append(("churn", partition))
            elif learner == "interest":
                candidates, ranked, next_category = label
                learners.interest.record_hit(ranked, next_category)
                learners.interest.learn(candidates, next_category)
            else:
                context, arm, reward = label
                learners.offers.learn(context, arm, reward)
            result.count(learner)

    def _interest(
        self, user: UserInput, probs: np.ndarray, learners: Learners
    ) -> list[tuple[str, float]]:
        profile = current_profile(user.state, self.config.features)
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
        ranked = learners.interest.rank(candidates, self.config.interest_k)
        user.scores.interest_pending = PendingInterest(
            user.at_ms, [c for c, _p in ranked], candidates
        ).to_dict()
        return ranked

    def _rank_recs(
        self, candidates: Candidates, model_scores: np.ndarray, user: UserInput, learners: Learners
    ) -> list[tuple[str, float]]:
        profile = current_profile(user.state, self.config.features)
        cooc = dict(
            learners.cooccurrence.candidates(
                sorted(profile.cart), len(candidates.items), now_ms=user.at_ms, exclude=set()
            )
        )
        top = max(cooc.values(), default=0.0) or 1.0
        w = self.config.recs_model_weight
        scored = [
            (item, w * float(s) + (1 - w) * cooc.get(item, 0.0) / top)
            for item, s in zip(candidates.items, model_scores, strict=True)
            if item not in profile.cart
        ]
        scored.sort(key=lambda kv: (-kv[1], kv[0]))
        return scored[: self.config.recs_k]

    def _offer(
        self,
        user: UserInput,
        learners: Learners,
        p_churn: float,
        spend: float,
        vector: list[float],
        head: dict[str, Any],
        result: ScoreResult,
    ) -> None:
        scores = user.scores
        if scores.offer_pending is not None:
            return
        last = scores.last_offer_ts
        if last is not None and user.at_ms - last < self.config.offer_cooldown_ms:
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
        result.due.append((user.partition, user.at_ms + self.config.offer_window_ms, user.user_id))
        self._emit(
            result,
            scores,
            "offers",
            {
                **head,
                "offer": learners.offers.offer_payload(arm),
                "propensity": round(propensity, 6),
                "models": {"online": "river-linucb"},
            },
        )

    def _learn_cooccurrence(self, user: UserInput, learners: Learners) -> None:
        """Items ordered together, and each item added with what was already in the cart
        (only the new item's pairs, so a cart's older pairs are not counted again)."""
        cart = current_profile(user.state, self.config.features).cart
        for event in user.events:
            if isinstance(event, Order) and len(event.items) > 1:
                learners.cooccurrence.update([line.item_id for line in event.items], event.ts)
            elif isinstance(event, CartChange) and event.action == "add":
                learners.cooccurrence.update(
                    sorted(set(cart) | {event.item_id}), event.ts, added=[event.item_id]
                )


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[Any], np.ndarray], arg: Any) -> np.ndarray:
        started = time.perf_counter()
        try:
            return fn(arg)
        finally:
            self.seconds[name] = time.perf_counter() - started


def _working_copy(scores: UserScores) -> UserScores:
    """A copy of a user's scoring state that scoring may change without touching ``scores``:
    the containers scoring changes in place are copied, the rest is replaced, never changed.

    Pending churn entries are shared, not copied (a user holds a dozen of them): they are first
    brought to their object form in ``scores`` itself (a change of form only, what
    ``add_churn_prediction`` does anyway), and the one change made to them in place, the mark
    that the user ordered within their horizon, is a fact about an event already applied to the
    features that would not be seen again: it is kept even when the user's step fails.
    """
    pending = scores.churn_pending
    for n, entry in enumerate(pending):
        if not isinstance(entry, PendingChurn):
            pending[n] = PendingChurn.from_list(entry)
    return dataclasses.replace(scores, latest=dict(scores.latest), churn_pending=list(pending))


def _commit(target: UserScores, source: UserScores) -> None:
    """Write a working copy back into the user's own object (callers hold that one)."""
    for spec in dataclasses.fields(target):
        setattr(target, spec.name, getattr(source, spec.name))


def _category_of(event: Event) -> str | None:
    if isinstance(event, Click) or (isinstance(event, CartChange) and event.action == "add"):
        return event.category
    if isinstance(event, Order) and event.items:
        return event.items[0].category
    return None


def _feed(model: Model, **arrays: np.ndarray | None) -> dict[str, np.ndarray]:
    """Map our arrays onto the model's declared inputs: features first, the int sequence next."""
    feed: dict[str, np.ndarray] = {}
    for spec in model.inputs:
        if len(spec.shape) == 2 and spec.dtype.kind == "f":
            feed[spec.name] = arrays["features"]  # type: ignore[assignment]
        else:
            feed[spec.name] = arrays["sequence"]  # type: ignore[assignment]
    return feed
