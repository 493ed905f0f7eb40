"""Judging published scores against the log's future, on a hand-built log."""

from __future__ import annotations

import pytest

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
    assert (
        report["churn"].items()
        >= {
            "judged": 2,
            "positive_rate": 0.5,
            "auc_published": 1.0,
            "auc_onnx_alone": 0.0,
        }.items()
    )
    assert report["churn"]["published"] == pytest.approx(
        {
            "judged": 2,
            "auc": 1.0,
            "brier": (0.2**2 + 0.3**2) / 2,
            "mean_predicted": 0.45,
            "observed": 0.5,
        }
    )
    assert report["churn"]["btyd"] == {} and report["churn"]["btyd_coverage"] == 0.0
    # After ts 0 the next action is the order (books); after day 5, the cart add (music).
    assert report["interest"]["judged"] == 2 and report["interest"]["hit_rate_at_5"] == 0.5
    assert report["recs"]["judged"] == 1 and report["recs"]["recall_at_10"] == 1.0


def test_judge_scores_the_btyd_expert_per_horizon_and_value_against_the_naive_forecast() -> None:
    def order(user: str, day: float, total: float) -> Order:
        ts = round(day * DAY_MS)
        return Order(f"{user}{day}", user, ts, f"o{user}{day}", (OrderLine("i", total),), total)

    # "loyal" orders every 10 days all year; "gone" ordered twice early on, then never again.
    events = [order("loyal", d, 50.0) for d in range(0, 361, 10)]
    events += [order("gone", 5, 80.0), order("gone", 60, 80.0)]
    truth = LogTruth(events)

    def scores(user: str, day: int, churn: dict[str, float], orders: float, clv: float) -> tuple:
        head = {"user_id": user, "ts": day * DAY_MS, "trigger": "x", "models": {}}
        btyd = {"p_alive": 1 - churn["30d"], "churn": churn}
        return (
            {**head, "churn_probability": 0.5, "horizon_days": 30, "components": {"btyd": btyd}},
            {**head, "expected_orders": orders, "clv": clv, "clv_days": 90},
        )

    loyal = scores("loyal", 180, {"30d": 0.1, "90d": 0.05, "400d": 0.0}, 9.0, 450.0)
    gone = scores("gone", 180, {"30d": 0.8, "90d": 0.7, "400d": 0.6}, 0.5, 40.0)
    report = judge(
        truth,
        {"scores.churn": [loyal[0], gone[0]], "scores.purchase_power": [loyal[1], gone[1]]},
    )
    btyd = report["churn"]["btyd"]
    assert list(btyd) == ["30d", "90d"]  # 400 days after day 180 is past the log's end
    assert btyd["30d"] == pytest.approx(
        {
            "judged": 2,
            "auc": 1.0,
            "brier": (0.1**2 + 0.2**2) / 2,
            "mean_predicted": 0.45,
            "observed": 0.5,
        }
    )
    assert report["churn"]["btyd_coverage"] == 1.0
    value = report["value"]
    # Over days 180-270 "loyal" spent 9 x 50 and "gone" nothing; over days 90-180 the same.
    assert value["judged"] == 2
    assert value["clv_mae"] == (0.0 + 40.0) / 2 and value["naive_clv_mae"] == 0.0
    assert value["orders_mae"] == (0.0 + 0.5) / 2 and value["mean_spend"] == 225.0


def test_online_eval_judges_what_the_pipeline_published(tmp_path, capsys) -> None:
    """``python -m offline_train.online_eval LOG``: the worker's pipeline over a generated
    orders-only shop, every expert judged per horizon, and lifetime value against the naive
    forecast."""
    import json

    from offline_train.online_eval import main
    from stream.tools.generator.orders_only import OrdersOnlyConfig, write_orders_only

    log = tmp_path / "orders.jsonl"
    write_orders_only(OrdersOnlyConfig(users=400, days=200, seed=3), log)
    main([str(log), "--clv-period", "60d"])
    report = json.loads(capsys.readouterr().out)
    churn, value = report["churn"], report["value"]
    assert churn["judged"] > 1000 and churn["btyd_coverage"] == 1.0
    assert {"30d", "90d"} <= set(churn["btyd"]) <= {"30d", "90d", "180d"}
    for figures in (churn["published"], churn["onnx"], *churn["btyd"].values()):
        assert figures["judged"] > 0 and 0.0 <= figures["brier"] < 0.3
        assert 0.0 <= figures["mean_predicted"] <= 1.0 and 0.0 <= figures["observed"] <= 1.0
    # On a shop of 400 customers the BTYD expert ranks next month's churners from the start.
    assert churn["btyd"]["30d"]["auc"] > 0.55
    assert value["judged"] > 100 and 0 < value["clv_mae"] < value["naive_clv_mae"]
