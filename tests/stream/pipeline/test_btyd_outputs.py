"""The partition's BTYD expert through the real pipeline: it learns from orders, refits, is
checkpointed with the other learners, and its figures reach ``scores.churn`` and
``scores.purchase_power`` for customers (null for a visitor who never ordered)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stream.models.registry import load_models
from stream.pipeline import Stores
from stream.scoring.contracts import problems
from stream.scoring.state import Learners
from tests.stream.pipeline.test_batch import DAY, NOW, Clock, Feed, make, run, user_on


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return load_models()


def _messages(out, topic: str) -> dict[str, dict]:
    return {
        r.key.decode(): orjson.loads(r.value) for r in out.records if r.topic == topic and r.key
    }


def test_customers_get_the_btyd_figures_and_visitors_none(models) -> None:
    feed, clock, stores = Feed(), Clock(), Stores.in_memory()
    pipeline = make(models, stores, clock)
    buyer, steady, visitor = user_on(0), user_on(0, 1), user_on(0, 2)
    history = [feed.order(buyer, NOW - 200 * DAY, "b0")]
    history += [feed.order(steady, NOW - (200 - 20 * k) * DAY, f"s{k}") for k in range(10)]
    for record in sorted(history, key=lambda r: orjson.loads(r.value)["ts"]):
        run(pipeline, [record])
    out = run(
        pipeline,
        [
            feed.order(buyer, NOW - 2 * DAY, "b1"),
            feed.order(steady, NOW - DAY, "s10"),
            feed.click(visitor, NOW - 1000, "v1"),
        ],
    )
    churn, power = _messages(out, "scores.churn"), _messages(out, "scores.purchase_power")
    for topic, messages in (("scores.churn", churn), ("scores.purchase_power", power)):
        for message in messages.values():
            assert problems(topic, message) == []
    assert churn[visitor]["components"]["btyd"] is None
    assert power[visitor]["expected_orders"] is None and power[visitor]["clv"] is None
    # A visitor's published churn is known at the primary horizon only; a customer's at all.
    assert churn[visitor]["p_alive"] is None
    assert churn[visitor]["horizons"] == {
        "30d": churn[visitor]["churn_probability"],
        "90d": None,
        "180d": None,
    }
    for user in (buyer, steady):
        message = churn[user]
        assert message["p_alive"] == message["components"]["btyd"]["p_alive"]
        assert message["horizons"]["30d"] == message["churn_probability"]
        assert (
            message["horizons"]["180d"] <= message["horizons"]["90d"] <= message["horizons"]["30d"]
        )
        assert 0 <= message["components"]["online"] <= 1
        assert message["components"]["weight_btyd"] == 0.0  # no labels yet: ONNX as it is
    for user in (buyer, steady):
        btyd = churn[user]["components"]["btyd"]
        assert set(btyd["churn"]) == {"30d", "90d", "180d"}
        assert btyd["churn"]["180d"] <= btyd["churn"]["90d"] <= btyd["churn"]["30d"]
        assert power[user]["clv_days"] == 365.0 and power[user]["clv"] > 0
    # Eleven orders 20 days apart promise more than two orders 200 days apart.
    assert power[steady]["expected_orders"] > power[buyer]["expected_orders"]
    assert (
        churn[steady]["components"]["btyd"]["churn"]["30d"]
        < (churn[buyer]["components"]["btyd"]["churn"]["30d"])
    )
    # The expert learned every order and is checkpointed with the partition's learners.
    learners = pipeline.learners.of(0)
    assert learners.btyd._orders_since_fit == 13 and len(learners.btyd) == 2
    restored = Learners.from_bytes(learners.to_bytes())
    assert restored.btyd._sample == learners.btyd._sample


def test_an_idle_customers_btyd_churn_rises_at_a_clock_tick(models) -> None:
    feed, clock, stores = Feed(), Clock(), Stores.in_memory()
    pipeline = make(models, stores, clock)
    buyer = user_on(1)
    run(pipeline, [feed.order(buyer, NOW - 100 * DAY, "o1")])
    before = _messages(run(pipeline, [feed.order(buyer, NOW - 90 * DAY, "o2")]), "scores.churn")
    ticked = run(pipeline, [feed.tick(p, NOW) for p in range(4)])
    after = _messages(ticked, "scores.churn")
    assert after[buyer]["trigger"] == "clock"
    p_before, p_after = before[buyer]["components"]["btyd"], after[buyer]["components"]["btyd"]
    assert p_after["p_alive"] < p_before["p_alive"]
    assert p_after["churn"]["30d"] > p_before["churn"]["30d"]


def test_an_idle_customers_published_churn_follows_the_btyd_expert(models) -> None:
    """Once the blend trusts the BTYD expert with its customers, an idle customer's published
    churn rises at a clock tick the way the expert says, at every horizon."""
    feed, clock, stores = Feed(), Clock(), Stores.in_memory()
    pipeline = make(models, stores, clock)
    buyer = user_on(1)
    run(pipeline, [feed.order(buyer, NOW - 100 * DAY, "o1")])
    blend = pipeline.learners.of(1).churn
    blend._labels = blend.min_labels  # as after a shop's first labels, where BTYD did best
    blend._mixture.btyd_advantage = 40.0
    before = _messages(run(pipeline, [feed.order(buyer, NOW - 90 * DAY, "o2")]), "scores.churn")
    after = _messages(run(pipeline, [feed.tick(p, NOW) for p in range(4)]), "scores.churn")
    b, a = before[buyer], after[buyer]
    assert a["trigger"] == "clock" and a["components"]["weight_btyd"] > 0.99
    assert a["p_alive"] < b["p_alive"]
    assert a["churn_probability"] > b["churn_probability"]
    assert all(a["horizons"][h] > b["horizons"][h] for h in ("30d", "90d", "180d"))
    # The published figure is the expert's (its calibration is still the identity).
    btyd = a["components"]["btyd"]["churn"]["30d"]
    assert a["churn_probability"] == pytest.approx(btyd, abs=0.01)
    assert problems("scores.churn", a) == []
