"""Which categories a user acts on next: the ONNX scores re-ranked by a pointwise online learner.

Each candidate category comes with a few shop-agnostic features chosen by the caller, e.g.
``onnx_p`` (the ONNX model's probability for it), ``affinity_share`` (the user's long-run share
of that category), ``recent_share`` and ``is_last``. A River logistic regression scores every
candidate independently (pointwise) as "is this the next category?", and the scores are
normalised over the candidates so they read as probabilities of one next category.

The label is the category of the user's next action: that candidate is the one positive, the
others are negatives. At most ``max_negatives`` negatives (a seeded sample) are learned per
label, so the positive:negative ratio — and the learner's calibration — does not depend on how
many categories a shop has. A label whose category was not among the candidates teaches the
pointwise model nothing about what it ranked and is skipped.

Until ``min_labels`` labels, candidates are ranked by a fixed prior,
``0.5 * onnx_p + 0.5 * affinity_share`` (missing keys count as 0): the ONNX model, hedged by the
user's own habits, which is what a new shop has before it has labels of its own.

Quality is the rolling hit-rate@k of what was actually published (``record_hit``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from river import base, linear_model, metrics, optim, utils

__all__ = ["InterestBlend", "prior_score"]


def prior_score(features: Mapping[str, float]) -> float:
    """The ranking used before the online learner has ``min_labels`` labels."""
    return 0.5 * float(features.get("onnx_p", 0.0)) + 0.5 * float(
        features.get("affinity_share", 0.0)
    )


class InterestBlend(base.Base):
    """Pointwise online re-ranking of candidate next categories.

    Parameters
    ----------
    lr
        SGD learning rate of the logistic regression (weights and intercept).
    seed
        Seeds the negative subsampling.
    window
        Labels in the rolling hit-rate.
    min_labels
        Labels before the learner, rather than the prior, ranks.
    max_negatives
        Negatives learned per label.

    Examples
    --------
    >>> blend = InterestBlend(min_labels=20)
    >>> cands = {
    ...     "books": {"onnx_p": 0.6, "affinity_share": 0.2, "recent_share": 0.0, "is_last": 0.0},
    ...     "toys": {"onnx_p": 0.3, "affinity_share": 0.5, "recent_share": 1.0, "is_last": 1.0},
    ...     "home": {"onnx_p": 0.1, "affinity_share": 0.3, "recent_share": 0.0, "is_last": 0.0},
    ... }
    >>> [(c, round(p, 3)) for c, p in blend.rank(cands, k=2)]  # the prior; ties by name
    [('books', 0.4), ('toys', 0.4)]

    On this shop users go back to the category they were just in:

    >>> for _ in range(50):
    ...     ranked = [c for c, _ in blend.rank(cands, k=1)]
    ...     blend.record_hit(ranked, "toys")
    ...     blend.learn(cands, "toys")
    >>> blend.rank(cands, k=1)[0][0], blend.labels_seen
    ('toys', 50)
    >>> blend.metrics()  # 20 misses under the prior, then hits
    {'hit_rate_at_k': 0.6}
    """

    def __init__(
        self,
        *,
        lr: float = 0.05,
        seed: int = 0,
        window: int = 1000,
        min_labels: int = 200,
        max_negatives: int = 5,
    ) -> None:
        if window <= 0 or min_labels < 0 or max_negatives < 0:
            raise ValueError("window must be positive, min_labels and max_negatives >= 0")
        self.lr = lr
        self.seed = seed
        self.window = window
        self.min_labels = min_labels
        self.max_negatives = max_negatives

        self._model = linear_model.LogisticRegression(optimizer=optim.SGD(lr), intercept_lr=lr)
        self._rng = random.Random(seed)
        self._labels = 0
        self._hits = utils.Rolling(metrics.Accuracy, window_size=window)

    @property
    def labels_seen(self) -> int:
        return self._labels

    def _score(self, features: Mapping[str, float]) -> float:
        if self._labels < self.min_labels:
            return prior_score(features)
        return float(self._model.predict_proba_one(dict(features)).get(True, 0.0))

    def rank(
        self, candidates: Mapping[str, Mapping[str, float]], k: int
    ) -> list[tuple[str, float]]:
        """The top ``k`` candidates with probabilities normalised over *all* candidates (so the
        top ``k`` sum to at most 1). Ties break by category name, so the order is stable."""
        if not candidates or k <= 0:
            return []
        scores = {c: max(self._score(f), 0.0) for c, f in candidates.items()}
        total = sum(scores.values())
        if total > 0.0:
            probs = {c: s / total for c, s in scores.items()}
        else:
            probs = {c: 1.0 / len(scores) for c in scores}
        ranked = sorted(probs.items(), key=lambda cp: (-cp[1], cp[0]))
        return ranked[:k]

    def learn(self, candidates: Mapping[str, Mapping[str, float]], next_category: str) -> None:
        """Learn from the category the user acted on next, given the candidates that were
        ranked for that action (skipped when it was not a candidate)."""
        if next_category not in candidates:
            return
        negatives = sorted(c for c in candidates if c != next_category)
        if len(negatives) > self.max_negatives:
            negatives = self._rng.sample(negatives, self.max_negatives)
        self._model.learn_one(dict(candidates[next_category]), True)
        for c in negatives:
            self._model.learn_one(dict(candidates[c]), False)
        self._labels += 1

    def record_hit(self, ranked: Sequence[str], next_category: str) -> None:
        """Count whether the published top-k (``ranked``) contained the next category."""
        self._hits.update(True, next_category in ranked)
        self._hits_recorded = getattr(self, "_hits_recorded", 0) + 1

    def metrics(self) -> dict[str, float]:
        """Rolling hit rate of the published top-k; NaN before the first hit is recorded."""
        if not getattr(self, "_hits_recorded", 0):
            return {"hit_rate_at_k": float("nan")}
        return {"hit_rate_at_k": float(self._hits.get())}
