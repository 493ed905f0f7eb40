"""Held-out evaluation of each model next to a simple baseline on the very same examples.

Every metric is reported as ``{"model", "baselines": {name: value}, "baseline", "better",
"beats_baseline"}`` where ``baseline`` is the best baseline; a model that does not beat it says
so (``beats_baseline: false``), nothing is hidden. Thresholds and calibration bins are fitted
on *training* examples only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from offline_train import metrics as m
from offline_train.dataset import RecsSet
from stream.features import FEATURE_NAMES

__all__ = [
    "binned_probability",
    "churn_report",
    "compare",
    "interest_baseline_ranking",
    "interest_report",
    "purchase_power_report",
    "recs_report",
]

_HOURS_SINCE_ORDER = FEATURE_NAMES.index("hours_since_order")


def compare(model: float, baselines: dict[str, float], better: str) -> dict[str, Any]:
    """One metric: the model's value, each baseline's, and whether the model beats the best.

    >>> compare(0.8, {"recency": 0.7}, "higher")["beats_baseline"]
    True
    >>> compare(5.0, {"mean": 4.0, "last": 6.0}, "lower")["baseline"]
    4.0
    """
    pick = max if better == "higher" else min
    best = pick(baselines.values())
    beats = model > best if better == "higher" else model < best
    return {
        "model": round(float(model), 6),
        "baseline": round(float(best), 6),
        "baselines": {k: round(float(v), 6) for k, v in baselines.items()},
        "better": better,
        "beats_baseline": bool(beats),
    }


def _summary(
    metrics: dict[str, dict[str, Any]], primary: tuple[str, ...] | None = None, **extra: Any
) -> dict[str, Any]:
    """The verdict is over the ``primary`` metrics (default: all). Precision and recall at a
    threshold trade against each other, so for churn the verdict uses F1 with AUC and Brier,
    and precision/recall are still shown with their own flags."""
    primary = tuple(metrics) if primary is None else primary
    return {
        "metrics": metrics,
        "primary_metrics": list(primary),
        "beats_baseline": all(metrics[k]["beats_baseline"] for k in primary),
        "losing_metrics": [k for k, v in metrics.items() if not v["beats_baseline"]],
        **extra,
    }


def binned_probability(
    score_train: np.ndarray, y_train: np.ndarray, score: np.ndarray, bins: int = 20
) -> np.ndarray:
    """Turn a raw score into a probability: the training positive rate of its quantile bin.

    >>> binned_probability(np.array([1., 2., 3., 4.]), np.array([0, 0, 1, 1]),
    ...                    np.array([1.5, 3.5]), bins=2).tolist()
    [0.0, 1.0]
    """
    edges = np.unique(np.quantile(score_train, np.linspace(0, 1, bins + 1)[1:-1]))
    which_train = np.searchsorted(edges, score_train, side="right")
    rates = np.array(
        [
            y_train[which_train == b].mean() if (which_train == b).any() else y_train.mean()
            for b in range(len(edges) + 1)
        ]
    )
    return rates[np.searchsorted(edges, score, side="right")]


def churn_report(
    y_val: np.ndarray,
    p_val: np.ndarray,
    threshold: float,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
) -> dict[str, Any]:
    """AUC, precision/recall/F1 at the threshold chosen on training data, and Brier score,
    against recency-only churn (hours since the last order, calibrated on training bins)."""
    base_train = binned_probability(
        x_train[:, _HOURS_SINCE_ORDER], y_train, x_train[:, _HOURS_SINCE_ORDER]
    )
    base_val = binned_probability(
        x_train[:, _HOURS_SINCE_ORDER], y_train, x_val[:, _HOURS_SINCE_ORDER]
    )
    base_threshold = m.best_f1_threshold(y_train, base_train)
    model_prf = m.precision_recall_f1(y_val, p_val, threshold)
    base_prf = m.precision_recall_f1(y_val, base_val, base_threshold)
    name = "recency_only"
    metrics = {
        "auc": compare(m.roc_auc(y_val, p_val), {name: m.roc_auc(y_val, base_val)}, "higher"),
        "precision": compare(model_prf[0], {name: base_prf[0]}, "higher"),
        "recall": compare(model_prf[1], {name: base_prf[1]}, "higher"),
        "f1": compare(model_prf[2], {name: base_prf[2]}, "higher"),
        "brier": compare(m.brier(y_val, p_val), {name: m.brier(y_val, base_val)}, "lower"),
    }
    return _summary(
        metrics,
        primary=("auc", "f1", "brier"),
        threshold=round(threshold, 6),
        baseline_threshold=round(base_threshold, 6),
        baseline="recency_only: hours since the last order, as the training churn rate of its bin",
        validation_churn_rate=round(float(np.mean(y_val)), 6),
    )


def purchase_power_report(
    y_val: np.ndarray, pred: np.ndarray, train_mean: float, last_30d: np.ndarray
) -> dict[str, Any]:
    """MAE and RMSE of the expected 30-day spend against the training mean and against
    "the next 30 days look like the last 30"."""
    const = np.full_like(y_val, train_mean)
    metrics = {
        "mae": compare(
            m.mae(y_val, pred),
            {"train_mean": m.mae(y_val, const), "last_30d_spend": m.mae(y_val, last_30d)},
            "lower",
        ),
        "rmse": compare(
            m.rmse(y_val, pred),
            {"train_mean": m.rmse(y_val, const), "last_30d_spend": m.rmse(y_val, last_30d)},
            "lower",
        ),
    }
    return _summary(
        metrics,
        baseline="train_mean: the mean training label; last_30d_spend: spend in the 30 days before",
        validation_mean_spend=round(float(np.mean(y_val)), 4),
    )


def interest_baseline_ranking(sequence: np.ndarray, popular: Sequence[int]) -> list[list[int]]:
    """Last-category baseline: the user's recent categories, latest first, then the most
    popular training categories.

    >>> interest_baseline_ranking(np.array([[0, 5, 7, 5]]), [9, 7])
    [[5, 7, 9]]
    """
    out = []
    for row in sequence:
        ranked = list(dict.fromkeys(int(c) for c in row[::-1] if c))
        ranked += [c for c in popular if c not in ranked]
        out.append(ranked)
    return out


def interest_report(
    label: np.ndarray,
    probs: np.ndarray,
    sequence: np.ndarray,
    popular: Sequence[int],
    ks: Sequence[int] = (1, 3),
) -> dict[str, Any]:
    """Hit-rate@k and MRR of the next category, against last-category."""
    ranked = np.argsort(-probs, axis=1, kind="stable").tolist()
    base = interest_baseline_ranking(sequence, popular)
    truth = [int(t) for t in label]
    metrics: dict[str, dict[str, Any]] = {}
    for k in ks:
        metrics[f"hit_rate@{k}"] = compare(
            m.hit_rate_at_k(ranked, truth, k),
            {"last_category": m.hit_rate_at_k(base, truth, k)},
            "higher",
        )
    metrics["mrr"] = compare(m.mrr(ranked, truth), {"last_category": m.mrr(base, truth)}, "higher")
    return _summary(
        metrics,
        baseline="last_category: recent categories latest first, then the most popular ones",
    )


def recs_report(
    recs: RecsSet, points: np.ndarray, scores: np.ndarray, k: int = 10
) -> dict[str, Any]:
    """Recall@k and NDCG@k of the items added later, against most-popular (shop-wide, at the
    same moment, without the cart's items). ``scores`` are per candidate row of ``points``."""
    ranked, popular, relevant = [], [], []
    cursor = 0
    for p in points:
        lo, hi = int(recs.offsets[p]), int(recs.offsets[p + 1])
        s = scores[cursor : cursor + hi - lo]
        cursor += hi - lo
        order = np.argsort(-s, kind="stable")
        ranked.append([recs.items[lo + i] for i in order])
        popular.append(recs.popular[p])
        relevant.append(recs.relevant[p])
    coverage = m.recall_at_k(ranked, relevant, 10**9)
    metrics = {
        f"recall@{k}": compare(
            m.recall_at_k(ranked, relevant, k),
            {"most_popular": m.recall_at_k(popular, relevant, k)},
            "higher",
        ),
        f"ndcg@{k}": compare(
            m.ndcg_at_k(ranked, relevant, k),
            {"most_popular": m.ndcg_at_k(popular, relevant, k)},
            "higher",
        ),
    }
    return _summary(
        metrics,
        baseline="most_popular: shop-wide most added items at that moment, minus the cart",
        candidate_recall=round(coverage, 6),
    )
