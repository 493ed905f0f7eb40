"""Evaluation metrics in plain numpy, so their definitions are readable and tested by hand.

Ranking metrics take, per example, the ranked predictions and the set of relevant answers;
a relevant answer that was never ranked (e.g. not among the candidates) counts as a miss, so
candidate generation cannot flatter the figures.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np

__all__ = [
    "best_f1_threshold",
    "brier",
    "hit_rate_at_k",
    "mae",
    "mrr",
    "ndcg_at_k",
    "precision_recall_f1",
    "recall_at_k",
    "rmse",
    "roc_auc",
]


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outranks a random negative
    (ties count half), via the Mann-Whitney rank sum.

    >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score)[order]
    ranks = np.empty(len(s), np.float64)
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2.0 + 1.0
        i = j + 1
    rank_of = np.empty(len(s), np.float64)
    rank_of[order] = ranks
    return float((rank_of[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def precision_recall_f1(
    y: np.ndarray, score: np.ndarray, threshold: float
) -> tuple[float, float, float]:
    """Precision, recall and F1 of ``score >= threshold``.

    >>> precision_recall_f1(np.array([1, 1, 0, 0]), np.array([0.9, 0.2, 0.7, 0.1]), 0.5)
    (0.5, 0.5, 0.5)
    """
    y = np.asarray(y).astype(bool)
    predicted = np.asarray(score) >= threshold
    tp = float((predicted & y).sum())
    precision = tp / predicted.sum() if predicted.any() else 0.0
    recall = tp / y.sum() if y.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def best_f1_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """The threshold (one of the scores) that maximises F1: chosen on *training* data.

    >>> best_f1_threshold(np.array([0, 1, 1, 0]), np.array([0.2, 0.6, 0.9, 0.7]))
    0.6
    """
    candidates = np.unique(np.quantile(score, np.linspace(0, 1, 201), method="lower"))
    best = max(candidates, key=lambda t: (precision_recall_f1(y, score, float(t))[2], -t))
    return float(best)


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of probabilities: calibration and sharpness in one number.

    >>> brier(np.array([1, 0]), np.array([0.8, 0.4]))
    0.1
    """
    return float(np.mean((np.asarray(p, np.float64) - np.asarray(y, np.float64)) ** 2))


def mae(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error.

    >>> mae(np.array([1.0, 3.0]), np.array([2.0, 1.0]))
    1.5
    """
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - np.asarray(y, np.float64))))


def rmse(y: np.ndarray, pred: np.ndarray) -> float:
    """Root mean squared error: punishes the large misses MAE forgives.

    >>> rmse(np.array([0.0, 0.0]), np.array([3.0, 4.0]))
    3.5355339059327378
    """
    diff = np.asarray(pred, np.float64) - np.asarray(y, np.float64)
    return float(np.sqrt(np.mean(diff**2)))


def hit_rate_at_k(ranked: Sequence[Sequence[object]], truth: Sequence[object], k: int) -> float:
    """Share of examples whose true answer is among the top ``k``.

    >>> hit_rate_at_k([["a", "b"], ["b", "a"], ["c", "a"]], ["a", "a", "b"], 1)
    0.3333333333333333
    """
    hits = [t in list(r[:k]) for r, t in zip(ranked, truth, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")


def mrr(ranked: Sequence[Sequence[object]], truth: Sequence[object]) -> float:
    """Mean reciprocal rank of the true answer (0 when it is not ranked at all).

    >>> mrr([["a", "b"], ["b", "a"], ["c", "d"]], ["a", "a", "b"])
    0.5
    """
    scores = []
    for r, t in zip(ranked, truth, strict=True):
        r = list(r)
        scores.append(1.0 / (r.index(t) + 1) if t in r else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def recall_at_k(
    ranked: Sequence[Sequence[object]], relevant: Sequence[Collection[object]], k: int
) -> float:
    """Mean over examples of the share of relevant items found in the top ``k``.

    >>> recall_at_k([["a", "b", "c"], ["x", "y"]], [{"a", "c"}, {"z"}], 2)
    0.25
    """
    values = [
        len(set(r[:k]) & set(rel)) / len(rel) for r, rel in zip(ranked, relevant, strict=True)
    ]
    return float(np.mean(values)) if values else float("nan")


def ndcg_at_k(
    ranked: Sequence[Sequence[object]], relevant: Sequence[Collection[object]], k: int
) -> float:
    """Binary-relevance NDCG@k: DCG of the ranking over the DCG of an ideal one.

    >>> round(ndcg_at_k([["b", "a"]], [{"a"}], 2), 4)  # 1/log2(3) over 1/log2(2)
    0.6309
    """
    values = []
    for r, rel in zip(ranked, relevant, strict=True):
        rel = set(rel)
        dcg = sum(1.0 / math.log2(i + 2) for i, item in enumerate(r[:k]) if item in rel)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(rel), k)))
        values.append(dcg / ideal if ideal else 0.0)
    return float(np.mean(values)) if values else float("nan")
