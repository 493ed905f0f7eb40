"""What a scoring batch is made of: its configuration, the users it scores, what each of
``Scorer``'s steps hands the next (``Prepared``, ``Inferred``) and what it returns
(``ScoreResult``, with a ``ScoreFailure`` per user who could not be scored)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.contract.events import Event
from stream.features import FeatureConfig, UserState
from stream.models.inputs import Candidates
from stream.models.registry import Model
from stream.scoring.churn_input import churn_input_matrix, stored_vector
from stream.scoring.user_scores import UserScores

__all__ = [
    "DAY_MS",
    "OUTPUT_TOPICS",
    "Cart",
    "Inferred",
    "Prepared",
    "ScoreFailure",
    "ScoreResult",
    "ScoringConfig",
    "ScoringFailed",
    "UserInput",
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
    #: An idle user whose churn label falls due is re-scored (and their risk published) only
    #: if their last churn score is at least this old; else only the label is delivered. Every
    #: re-score leaves a prediction pending, whose label re-scores the user again a horizon
    #: later: without this bound, each order starts such a chain, and a user idle after k
    #: orders was re-scored k times per horizon, as often as every ``churn_label_every_ms``.
    idle_rescore_every_ms: int = 7 * DAY_MS
    #: Horizons of the BTYD expert's churn probabilities (``components.btyd.churn``).
    churn_horizons_ms: tuple[int, ...] = (30 * DAY_MS, 90 * DAY_MS, 180 * DAY_MS)
    #: The period of ``expected_orders`` and ``clv`` (``scores.purchase_power``).
    clv_period_ms: int = 365 * DAY_MS
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


@dataclass(frozen=True)
class Cart:
    """A user's cart to recommend for: the model's candidates, and the co-occurrence weights
    of the cart's neighbours (``CoOccurrence.neighbour_weights``) the ranking blends in, read
    once when the batch is prepared."""

    candidates: Candidates
    neighbours: dict[str, float]


@dataclass
class Prepared:
    users: list[UserInput]
    churn_only: bool
    #: The models this batch is scored with, fixed at ``prepare`` so a swap mid-batch can't mix.
    models: dict[str, Model]
    features: np.ndarray
    vectors: list[list[float]]
    sequences: np.ndarray | None = None
    #: (index of user, cart) for users who added to their cart in this batch.
    carts: list[tuple[int, Cart]] = field(default_factory=list)
    #: Users left out of ``users`` because preparing (or inferring) them raised.
    failed: list[ScoreFailure] = field(default_factory=list)
    #: Rows of ``vectors`` as a pending prediction stores them (``stored``), made on demand.
    _stored: dict[int, list[float]] = field(default_factory=dict, repr=False, compare=False)
    _churn_inputs: np.ndarray | None = field(default=None, repr=False, compare=False)

    def stored(self, index: int) -> list[float]:
        """Row ``index`` as a pending churn prediction keeps it (``stored_vector``)."""
        row = self._stored.get(index)
        if row is None:
            row = self._stored[index] = stored_vector(self.vectors[index])
        return row

    def churn_inputs(self) -> np.ndarray:
        """The online churn learner's inputs of every row (``churn_input_matrix``), built
        for the whole batch on first call."""
        if self._churn_inputs is None:
            self._churn_inputs = churn_input_matrix(self.vectors)
        return self._churn_inputs

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
