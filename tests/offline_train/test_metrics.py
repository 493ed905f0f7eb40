"""Metric functions against values worked out by hand, and the modules' own doctests."""

from __future__ import annotations

import doctest
import importlib
import math

import numpy as np
import pytest

from offline_train import metrics as m
from offline_train.evaluate import binned_probability, compare, interest_baseline_ranking


def test_auc_counts_ties_as_half() -> None:
    # positives 0.5, 0.9; negatives 0.5, 0.1: pairs (0.5>0.5 tie=.5, 0.5>0.1, 0.9>0.5, 0.9>0.1)
    assert m.roc_auc(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.9, 0.1])) == 3.5 / 4
    assert m.roc_auc(np.array([1, 1, 0]), np.array([0.1, 0.2, 0.9])) == 0.0
    assert math.isnan(m.roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_precision_recall_f1_and_brier_by_hand() -> None:
    y = np.array([1, 1, 1, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.1])
    # threshold 0.5: predicted {0.9, 0.6, 0.7}: tp 2, fp 1, fn 1
    precision, recall, f1 = m.precision_recall_f1(y, p, 0.5)
    assert (precision, recall) == pytest.approx((2 / 3, 2 / 3))
    assert f1 == pytest.approx(2 / 3)
    # (0.01 + 0.16 + 0.64 + 0.49 + 0.01) / 5
    assert m.brier(y, p) == pytest.approx(1.31 / 5)
    assert m.precision_recall_f1(y, p, 0.95) == (0.0, 0.0, 0.0)


def test_mae_rmse_by_hand() -> None:
    y, pred = np.array([10.0, 0.0, 5.0]), np.array([7.0, 4.0, 5.0])
    assert m.mae(y, pred) == pytest.approx(7 / 3)
    assert m.rmse(y, pred) == pytest.approx(math.sqrt(25 / 3))


def test_ranking_metrics_by_hand() -> None:
    ranked = [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"]]
    truth = ["a", "a", "d"]  # d is never ranked: a miss everywhere
    assert m.hit_rate_at_k(ranked, truth, 1) == pytest.approx(1 / 3)
    assert m.hit_rate_at_k(ranked, truth, 2) == pytest.approx(2 / 3)
    assert m.mrr(ranked, truth) == pytest.approx((1 + 1 / 2 + 0) / 3)
    relevant = [{"b", "x"}, {"c"}, {"a"}]
    # recall@2: {b} of {b,x} = .5 ; {c} of {c} = 1 ; a not in top 2 = 0
    assert m.recall_at_k(ranked, relevant, 2) == pytest.approx(0.5)
    # ndcg@2: (1/log2 3) / (1 + 1/log2 3) ; 1 ; 0
    first = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert m.ndcg_at_k(ranked, relevant, 2) == pytest.approx((first + 1 + 0) / 3)


def test_best_threshold_maximises_f1_on_the_given_data() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    s = np.array([0.1, 0.3, 0.4, 0.8, 0.9, 0.85])
    t = m.best_f1_threshold(y, s)
    best = max(m.precision_recall_f1(y, s, float(c))[2] for c in s)
    assert m.precision_recall_f1(y, s, t)[2] == pytest.approx(best)


def test_report_helpers() -> None:
    assert compare(0.6, {"a": 0.7}, "higher")["beats_baseline"] is False
    assert compare(3.0, {"a": 4.0, "b": 5.0}, "lower") == {
        "model": 3.0, "baseline": 4.0, "baselines": {"a": 4.0, "b": 5.0},
        "better": "lower", "beats_baseline": True,
    }  # fmt: skip
    probs = binned_probability(
        np.arange(10.0), np.array([0] * 5 + [1] * 5), np.array([0.0, 9.0]), 2
    )
    assert probs.tolist() == [0.0, 1.0]
    assert interest_baseline_ranking(np.array([[0, 0, 3, 4, 3]]), [4, 9, 3]) == [[3, 4, 9]]


@pytest.mark.parametrize(
    "module",
    [
        "offline_train.metrics",
        "offline_train.split",
        "offline_train.evaluate",
    ],
)
def test_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
