"""The River-style contract every scoring learner keeps: deterministic given a seed, picklable
mid-stream (the clone carries on identically), inputs never mutated, feature order irrelevant."""

from __future__ import annotations

import copy
import pickle
import random
from collections.abc import Callable
from typing import Any

import pytest

from stream.scoring.cooccurrence import CoOccurrence
from stream.scoring.offers import OfferPolicy
from stream.scoring.online_churn import ChurnBlend
from stream.scoring.online_interest import InterestBlend
from stream.scoring.tiers import SpendTiers

DAY = 86_400_000


def _churn_inputs(rng: random.Random, n: int) -> list[tuple]:
    out = []
    for _ in range(n):
        x = {"log_orders": rng.random() * 3, "hours_idle": rng.random() * 9, "cart": rng.random()}
        p = rng.uniform(0.01, 0.99)
        out.append((x, p, rng.random() < 0.3 + 0.4 * x["cart"]))
    return out


def _churn_step(model: ChurnBlend, item: tuple) -> Any:
    x, p, y = item
    return (model.predict(x, p), model.predict_many([x, x], [p, 0.5]), model.learn(x, p, y))


def _interest_inputs(rng: random.Random, n: int) -> list[tuple]:
    out = []
    for _ in range(n):
        cats = rng.sample([f"c{i}" for i in range(10)], rng.randint(1, 9))
        cands = {
            c: {
                "onnx_p": rng.random(),
                "affinity_share": rng.random(),
                "recent_share": rng.random(),
                "is_last": float(rng.random() < 0.2),
            }
            for c in cats
        }
        out.append((cands, rng.choice([*cats, "elsewhere"])))
    return out


def _interest_step(model: InterestBlend, item: tuple) -> Any:
    cands, nxt = item
    ranked = model.rank(cands, 3)
    model.record_hit([c for c, _ in ranked], nxt)
    model.learn(cands, nxt)
    return ranked, model.metrics()


def _offer_inputs(rng: random.Random, n: int) -> list[tuple]:
    return [
        ({"churn": rng.random(), "log_spend": rng.random() * 5}, rng.random()) for _ in range(n)
    ]


def _offer_step(model: OfferPolicy, item: tuple) -> Any:
    ctx, u = item
    arm, p = model.choose(ctx)
    model.learn(ctx, arm, float(u < 0.3) - model.cost(arm))
    return arm, p, model.eligible(ctx["churn"], ctx["log_spend"])


def _tier_inputs(rng: random.Random, n: int) -> list[float]:
    return [rng.lognormvariate(3, 1) for _ in range(n)]


def _tier_step(model: SpendTiers, value: float) -> Any:
    model.update(value)
    return model.tier(value), model.thresholds


def _cooc_inputs(rng: random.Random, n: int) -> list[tuple]:
    items = [f"i{i}" for i in range(30)]
    return [(rng.sample(items, rng.randint(1, 5)), k * DAY // 4) for k in range(n)]


def _cooc_step(model: CoOccurrence, item: tuple) -> Any:
    basket, ts = item
    model.update(basket, ts, added=basket[-1:])
    return (
        model.candidates(basket[:2], 5, now_ms=ts, exclude={"i0"}),
        model.popular(3, ts, exclude=set(basket)),
    )


Case = tuple[Callable[[int], Any], Callable[[random.Random, int], list], Callable[[Any, Any], Any]]

CASES: dict[str, Case] = {
    "churn": (lambda seed: ChurnBlend(seed=seed, min_labels=20), _churn_inputs, _churn_step),
    "interest": (
        lambda seed: InterestBlend(seed=seed, min_labels=20),
        _interest_inputs,
        _interest_step,
    ),
    "offers": (lambda seed: OfferPolicy(seed=seed), _offer_inputs, _offer_step),
    "tiers": (lambda seed: SpendTiers(), _tier_inputs, _tier_step),
    "cooccurrence": (
        lambda seed: CoOccurrence(max_neighbours=4, max_items=20),
        _cooc_inputs,
        _cooc_step,
    ),
}


def _run(model: Any, step: Callable, inputs: list) -> list:
    return [step(model, item) for item in inputs]


@pytest.fixture(params=sorted(CASES))
def case(request) -> Case:
    return CASES[request.param]


def test_deterministic_given_a_seed(case):
    make, inputs_of, step = case
    inputs = inputs_of(random.Random(0), 150)
    assert _run(make(7), step, inputs) == _run(make(7), step, inputs)


def test_pickle_round_trip_mid_stream(case):
    make, inputs_of, step = case
    inputs = inputs_of(random.Random(1), 150)
    model = make(3)
    _run(model, step, inputs[:75])
    clone = pickle.loads(pickle.dumps(model))
    assert _run(clone, step, inputs[75:]) == _run(model, step, inputs[75:])


def test_inputs_not_mutated(case):
    make, inputs_of, step = case
    inputs = inputs_of(random.Random(2), 100)
    before = copy.deepcopy(inputs)
    _run(make(0), step, inputs)
    assert inputs == before


def _reorder(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, (list, tuple)):
        return type(value)(_reorder(v) for v in value)
    return value


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9, abs=1e-12)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("name", ["churn", "interest", "offers"])
def test_feature_order_irrelevant(name):
    make, inputs_of, step = CASES[name]
    inputs = inputs_of(random.Random(4), 120)
    assert _close(_run(make(1), step, _reorder(inputs)), _run(make(1), step, inputs))


def test_clone_is_a_fresh_learner_with_the_same_config(case):
    make, inputs_of, step = case
    inputs = inputs_of(random.Random(5), 60)
    model = make(2)
    _run(model, step, inputs)
    fresh = model.clone()
    assert fresh._get_params() == model._get_params()
    assert _run(fresh, step, inputs) == _run(make(2), step, inputs)


MODULES = ("online_churn", "online_interest", "cooccurrence", "offers", "tiers", "pending")


def test_learners_import_neither_faust_nor_onnxruntime() -> None:
    import subprocess
    import sys

    code = (
        "import sys;"
        + "".join(f"import stream.scoring.{m};" for m in MODULES)
        + "print('faust' in sys.modules, 'onnxruntime' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


@pytest.mark.parametrize("module", MODULES)
def test_no_wall_clock(module: str) -> None:
    """Time is an input: nothing here may read the clock (replays must give the same scores)."""
    import importlib
    import inspect

    source = inspect.getsource(importlib.import_module(f"stream.scoring.{module}"))
    for banned in ("import time", "from time", "datetime", "perf_counter", "monotonic("):
        assert banned not in source
