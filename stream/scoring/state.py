"""What scoring keeps: per user (latest scores, predictions awaiting their labels) and per
partition (the online learners), both small enough for a changelog-backed table.

Per-user scoring state lives beside, not inside, the feature state: a feature state is a
function of the events alone (replayable, comparable with offline training), while this one
also depends on which model versions scored the user.

Learners are kept per input partition. A partition's users, their pending labels and the
learners that learn from them move together on a rebalance, so no learner ever needs data
from another worker, and the changelog restores each one with its partition.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.models.popularity import ItemPopularity
from stream.scoring.cooccurrence import CoOccurrence
from stream.scoring.offers import OfferPolicy
from stream.scoring.online_churn import ChurnBlend
from stream.scoring.online_interest import InterestBlend
from stream.scoring.tiers import SpendTiers

__all__ = ["Learners", "UserScores"]

_USER_FORMAT = 1
_LEARNERS_FORMAT = 1


@dataclass
class UserScores:
    """One user's latest published scores and the predictions still waiting for a label."""

    #: Output topic -> the last message published there for this user.
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Churn predictions awaiting their label: ``[ts, vector, p_onnx]`` (``pending.PendingChurn``).
    churn_pending: list[Any] = field(default_factory=list)
    #: The last interest ranking: ``{"ranked": [...], "candidates": {cat: {feature: v}}}``.
    interest_pending: dict[str, Any] | None = None
    #: The offer shown and not yet rewarded: ``{"ts", "arm", "propensity", "context"}``.
    offer_pending: dict[str, Any] | None = None
    last_offer_ts: int | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            [
                _USER_FORMAT,
                self.latest,
                [list(p) for p in self.churn_pending],
                self.interest_pending,
                self.offer_pending,
                self.last_offer_ts,
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> UserScores:
        fmt, latest, churn, interest, offer, last_offer = orjson.loads(data)
        if fmt != _USER_FORMAT:
            raise ValueError(f"unknown scoring state format {fmt}: replay the changelog")
        return cls(latest, churn, interest, offer, last_offer)


class Learners:
    """The online learners of one partition."""

    def __init__(self, seed: int = 0) -> None:
        self.churn = ChurnBlend(seed=seed)
        self.interest = InterestBlend(seed=seed)
        self.cooccurrence = CoOccurrence()
        self.popularity = ItemPopularity()
        self.offers = OfferPolicy(seed=seed)
        self.tiers = SpendTiers()
        #: Labels learned since the last checkpoint to the changelog.
        self.dirty = 0

    def to_bytes(self) -> bytes:
        """A pickle: River estimators are plain picklable objects, and this is only ever read
        back from shopscore's own internal changelog topic."""
        self.dirty = 0
        return pickle.dumps((_LEARNERS_FORMAT, self.__dict__), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes) -> Learners:
        fmt, attrs = pickle.loads(data)
        if fmt != _LEARNERS_FORMAT:
            raise ValueError(f"unknown learners format {fmt}")
        learners = cls.__new__(cls)
        learners.__dict__.update(attrs)
        return learners
