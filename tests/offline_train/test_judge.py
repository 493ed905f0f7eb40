"""Judging published scores against the log's future, on a hand-built log."""

from __future__ import annotations

from offline_train.judge import DAY_MS, LogTruth, judge
from stream.contract.events import CartChange, Click, Order, OrderLine


def _truth() -> LogTruth:
    return LogTruth(
        [
            Click("c1", "stays", 0, "i1", category="books"),
            Order("o1", "stays", 5 * DAY_MS, "o1", (OrderLine("i1", 10.0, 1, "books"),), 10.0),
            Click("c2", "leaves", 0, "i2", category="toys"),
            CartChange("a1", "stays", 6 * DAY_MS, "i9", "add", category="music"),
            Click("c3", "stays", 40 * DAY_MS, "i3", category="books"),
        ]
    )


def test_churn_labels_come_from_orders_within_the_horizon() -> None:
    truth = _truth()
    assert truth.churned("stays", 0, 30 * DAY_MS) is False
    assert truth.churned("leaves", 0, 30 * DAY_MS) is True
    assert truth.churned("leaves", 20 * DAY_MS, 30 * DAY_MS) is None  # horizon beyond the log


def test_judge_scores_churn_interest_and_recs() -> None:
    def head(user: str, ts: int) -> dict:
        return {"user_id": user, "ts": ts, "trigger": "x", "models": {}}

    outputs = {
        "scores.churn": [
            {
                **head("stays", 0),
                "churn_probability": 0.2,
                "horizon_days": 30,
                "components": {"onnx": 0.9},
            },
            {
                **head("leaves", 0),
                "churn_probability": 0.7,
                "horizon_days": 30,
                "components": {"onnx": 0.1},
            },
        ],
        "scores.interest": [
            {**head("stays", 0), "top_categories": [{"category": "books", "p": 0.6}]},
            {**head("stays", 5 * DAY_MS), "top_categories": [{"category": "books", "p": 0.6}]},
        ],
        "recs.cart": [{**head("stays", 5 * DAY_MS), "items": [{"item_id": "i9", "score": 1.0}]}],
    }
    report = judge(_truth(), outputs)
    assert report["churn"] == {
        "judged": 2,
        "positive_rate": 0.5,
        "auc_published": 1.0,
        "auc_onnx_alone": 0.0,
    }
    # After ts 0 the next action is the order (books); after day 5, the cart add (music).
    assert report["interest"]["judged"] == 2 and report["interest"]["hit_rate_at_5"] == 0.5
    assert report["recs"]["judged"] == 1 and report["recs"]["recall_at_10"] == 1.0
