"""ChurnBlend: ONNX first, the online stacker once it has earned it, and a shift on drift."""

from __future__ import annotations

import copy
import math
import pickle
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import drift, metrics

from stream.scoring.online_churn import ONNX_LOGIT, ChurnBlend


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _stream(n: int, seed: int, change_at: int | None = None):
    """Users with two shop-agnostic features; ONNX is right before ``change_at`` and the
    relationship changes after it (planted drift)."""
    rng = random.Random(seed)
    for i in range(n):
        f1, f2 = rng.gauss(0, 1), rng.gauss(0, 1)
        p_onnx = _sigmoid(2 * f1 - 1)
        changed = change_at is not None and i >= change_at
        p_true = _sigmoid(-1.5 * f1 + 2 * f2) if changed else p_onnx
        yield {"f1": f1, "f2": f2}, p_onnx, rng.random() < p_true


def _trained(n: int = 300, seed: int = 3) -> ChurnBlend:
    model = ChurnBlend(min_labels=100)
    for x, p, y in _stream(n, seed):
        model.learn(x, p, y)
    return model


def test_onnx_alone_until_min_labels():
    model = ChurnBlend(min_labels=50)
    for i, (x, p, y) in enumerate(_stream(49, 1)):
        assert model.predict(x, p) == p
        model.learn(x, p, y)
        assert model.labels_seen == i + 1
    assert model.weight_online == 0.0
    model.learn({"f1": 0.0, "f2": 0.0}, 0.5, True)
    assert 0.0 < model.weight_online < 1.0


def test_onnx_logit_is_derived_from_p_onnx():
    model = _trained()
    x = {"f1": 0.3, "f2": -1.0}
    assert model.predict({**x, ONNX_LOGIT: 42.0}, 0.7) == model.predict(x, 0.7)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(-3, 3), st.floats(-3, 3), st.floats(0, 1, exclude_min=True, exclude_max=True)
        ),
        max_size=20,
    )
)
def test_predict_many_equals_predict(rows):
    model = _TRAINED
    xs = [{"f1": a, "f2": b} for a, b, _p in rows]
    ps = [p for _a, _b, p in rows]
    batch = model.predict_many(xs, ps)
    assert batch == [model.predict(x, p) for x, p in zip(xs, ps, strict=True)]
    assert all(0.0 <= p <= 1.0 for p in batch)


_TRAINED = _trained()


def _drifted(advantage: float | None = None) -> ChurnBlend:
    model = ChurnBlend(min_labels=100)
    for x, p, y in _stream(600, 5, change_at=200):
        model.learn(x, p, y)
    if advantage is not None:
        model._mixture.advantage = advantage  # the calibrated ONNX expert wins outright
    return model


@pytest.mark.parametrize(
    "model",
    [ChurnBlend(), _trained(), _drifted(), _drifted(advantage=-50.0)],
    ids=["before-min-labels", "trained", "online-expert-weighs", "calibrated-only"],
)
def test_predict_matrix_equals_predict_per_row(model):
    rng = random.Random(9)
    # f3 was never seen (no variance yet), onnx_logit in X is replaced; +-40 get clipped.
    columns = ["f1", "f3", "f2", ONNX_LOGIT]
    rows = [[rng.gauss(0, 2), rng.gauss(0, 1), rng.gauss(0, 2), 7.0] for _ in range(50)]
    rows += [[40.0, 0.0, -40.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    ps = [rng.uniform(0.001, 0.999) for _ in rows[:-1]] + [1.0]
    expected = [
        model.predict(dict(zip(columns, r, strict=True)), p) for r, p in zip(rows, ps, strict=True)
    ]
    X = np.array(rows) if model.reads_features else None
    got = model.predict_matrix(X, columns, np.array(ps))
    assert got.shape == (len(rows),)
    assert np.allclose(got, expected, rtol=0, atol=1e-12)
    assert model.weight_online == 0.0 or len(set(np.round(got, 6))) > 10


def test_predict_matrix_needs_the_features_once_the_online_expert_weighs():
    model = _drifted()
    assert model.reads_features
    with pytest.raises(ValueError, match="reads_features"):
        model.predict_matrix(None, ["f1"], np.array([0.3]))


def test_predict_many_checks_lengths():
    with pytest.raises(ValueError):
        ChurnBlend().predict_many([{"f1": 1.0}], [0.1, 0.2])


def test_learn_and_predict_do_not_mutate_inputs():
    model = _trained()
    x = {"f1": 0.5, "f2": 1.0}
    before = copy.deepcopy(x)
    model.predict(x, 0.4)
    model.predict_many([x], [0.4])
    model.learn(x, 0.4, True)
    assert x == before


def test_pickle_round_trip_continues_identically():
    model = _trained()
    clone = pickle.loads(pickle.dumps(model))
    for x, p, y in _stream(200, 11):
        assert clone.predict(x, p) == model.predict(x, p)
        assert clone.learn(x, p, y) == model.learn(x, p, y)
    assert clone.metrics() == model.metrics()
    assert clone.weight_online == model.weight_online


def test_deterministic_for_a_seed():
    a, b = ChurnBlend(seed=5), ChurnBlend(seed=5)
    for x, p, y in _stream(600, 2, change_at=300):
        assert a.learn(x, p, y) == b.learn(x, p, y)
        assert a.predict(x, p) == b.predict(x, p)
    assert a.metrics() == b.metrics() and a.drifts == b.drifts


def test_trusts_a_calibrated_onnx_model():
    """When ONNX is the true model, the blend ranks as well as it does (and sees no drift)."""
    model = ChurnBlend()
    for x, p, y in _stream(3000, 4):
        model.learn(x, p, y)
    assert model.drifts == 0
    m = model.metrics()
    assert abs(m["roc_auc_blend"] - m["roc_auc_onnx"]) < 0.02


def test_planted_drift_shifts_the_blend_online_and_beats_onnx():
    model = ChurnBlend()
    change = 3000
    after_blend, after_onnx = metrics.ROCAUC(), metrics.ROCAUC()
    drift_at = []
    for i, (x, p, y) in enumerate(_stream(6000, 1, change_at=change)):
        if i >= change:
            after_blend.update(y, model.predict(x, p))
            after_onnx.update(y, p)
        if model.learn(x, p, y):
            drift_at.append(i)
            assert model.weight_online >= model.drift_weight
    assert drift_at and all(i >= change for i in drift_at)
    assert drift_at[0] < change + 300
    assert model.drifts == len(drift_at)
    assert model.weight_online > 0.9
    assert after_blend.get() > after_onnx.get() + 0.3
    m = model.metrics()
    assert m["roc_auc_blend"] > m["roc_auc_onnx"]
    assert m["log_loss_blend"] < m["log_loss_onnx"]


def test_improvements_are_not_counted_as_drift():
    """ADWIN also flags a falling loss; only a rising one shifts the blend."""
    model = ChurnBlend(min_labels=10_000)  # the blend is ONNX alone: its loss is ONNX's
    detector = drift.ADWIN(delta=model.drift_delta)
    flagged = 0
    for p_onnx in [0.9] * 400 + [0.02] * 400:  # ONNX confidently wrong, then right
        assert not model.learn({"f1": 0.0}, p_onnx, False)
        detector.update(-math.log(1 - p_onnx))
        flagged += detector.drift_detected
    assert flagged > 0  # the same losses do make ADWIN fire
    assert model.drifts == 0


def test_metrics_keys():
    assert set(ChurnBlend().metrics()) == {
        "roc_auc_blend",
        "roc_auc_onnx",
        "log_loss_blend",
        "log_loss_onnx",
    }


def test_no_figure_before_there_is_one():
    # River's rolling AUC reads 0.0 until it holds both classes: a dashboard would show a
    # broken model. NaN (not exported) until then; log-loss from the first label.
    model = ChurnBlend(window=4)
    assert all(math.isnan(v) for v in model.metrics().values())
    model.learn({"f1": 1.0}, 0.9, True)
    model.learn({"f1": 1.0}, 0.8, True)
    m = model.metrics()
    assert math.isnan(m["roc_auc_blend"]) and math.isnan(m["roc_auc_onnx"])
    assert m["log_loss_onnx"] > 0
    model.learn({"f1": 0.0}, 0.1, False)
    assert model.metrics()["roc_auc_onnx"] == 1.0
    for _ in range(4):  # the window (4 labels) holds one class again
        model.learn({"f1": 0.0}, 0.2, False)
    assert math.isnan(model.metrics()["roc_auc_onnx"])


def test_metrics_of_a_checkpoint_from_before_the_label_window():
    model = ChurnBlend(window=4)
    for y in (True, False, True):
        model.learn({"f1": float(y)}, 0.7 if y else 0.2, y)
    del model.__dict__["_recent"]  # as unpickled from an older checkpoint
    assert math.isnan(model.metrics()["roc_auc_onnx"])
    model.learn({"f1": 0.0}, 0.2, False)
    model.learn({"f1": 1.0}, 0.9, True)
    assert model.metrics()["roc_auc_onnx"] == 1.0


def test_rejects_bad_config():
    with pytest.raises(ValueError):
        ChurnBlend(drift_weight=1.0)
    with pytest.raises(ValueError):
        ChurnBlend(window=0)


# -- the BTYD expert ---------------------------------------------------------------------------


def _shop(n: int, seed: int):
    """Customers (half the users) churn as their BTYD probability says; visitors as ONNX says.
    ONNX knows nothing of customers (0.5 for all of them)."""
    rng = random.Random(seed)
    for _ in range(n):
        f1 = rng.gauss(0, 1)
        if rng.random() < 0.5:
            p_btyd = _sigmoid(rng.gauss(0, 2))
            yield {"f1": f1}, 0.5, rng.random() < p_btyd, p_btyd
        else:
            p_onnx = _sigmoid(2 * f1)
            yield {"f1": f1}, p_onnx, rng.random() < p_onnx, None


def _on_shop(n: int = 4000, seed: int = 1) -> ChurnBlend:
    model = ChurnBlend(min_labels=100)
    for x, p, y, p_btyd in _shop(n, seed):
        model.learn(x, p, y, p_btyd)
    return model


def test_the_btyd_expert_earns_the_customers_weight_and_only_theirs():
    model = _on_shop()
    _w_cal, _w_online, w_btyd = model.shares(True)
    assert w_btyd > 0.9
    assert model.shares(False)[2] == 0.0
    # Customers are ranked by the expert, visitors as before.
    assert model.predict({"f1": 0.0}, 0.5, 0.9) > model.predict({"f1": 0.0}, 0.5, 0.2) + 0.5
    assert model.predict({"f1": 1.0}, 0.8) > model.predict({"f1": -1.0}, 0.2)


def test_visitors_labels_leave_the_customers_mixture_alone():
    model = _on_shop()
    before = model.shares(True)
    for x, p, y, _p_btyd in _shop(3000, 2):
        model.learn(x, p, y)  # every label a visitor's (no BTYD view)
    assert model.shares(True) == before


def test_the_mixture_judges_what_the_experts_said_then():
    """A label is judged on the figures kept with its prediction, not on what the experts
    (which may have learned the label's burst since) would say now."""
    said_online_right, judged_now = ChurnBlend(min_labels=0), ChurnBlend(min_labels=0)
    for _ in range(50):
        said_online_right.learn({"f1": 0.0}, 0.5, True, said=[0.5, 0.95])
        judged_now.learn({"f1": 0.0}, 0.5, True)
    assert said_online_right.weight_online > 0.99
    assert said_online_right.metrics()["log_loss_blend"] == pytest.approx(-math.log(0.5))
    assert judged_now.weight_online < said_online_right.weight_online


@pytest.mark.parametrize("trained", [False, True], ids=["before-min-labels", "trained"])
def test_predict_matrix_with_the_btyd_expert_equals_predict_per_row(trained):
    model = _on_shop() if trained else ChurnBlend()
    rng = random.Random(3)
    columns = ["f1"]
    rows = [[rng.gauss(0, 1)] for _ in range(40)]
    ps = [rng.uniform(0.01, 0.99) for _ in rows]
    btyd = [rng.uniform(0.01, 0.99) if i % 3 else None for i in range(len(rows))]
    expected = [
        model.predict({"f1": r[0]}, p, b) for r, p, b in zip(rows, ps, btyd, strict=True)
    ]
    as_array = np.array([np.nan if b is None else b for b in btyd])
    got = model.predict_matrix(np.array(rows), columns, np.array(ps), as_array)
    assert np.allclose(got, expected, rtol=0, atol=1e-12)
    experts = model.experts_matrix(np.array(rows), columns, np.array(ps), as_array)
    for row, r, p, b in zip(experts, rows, ps, btyd, strict=True):
        calibrated, online, expert = model.experts({"f1": r[0]}, p, b)
        assert row[:2] == pytest.approx([calibrated, online], abs=1e-12)
        assert (expert is None) == math.isnan(row[2])


def test_a_blend_from_before_the_btyd_expert_loads_and_keeps_its_record():
    """A checkpoint's blend of the shape before this expert: the stacker's advantage in
    ``_advantage``, ONNX calibrated by a River regression, no BTYD expert."""
    from river import linear_model, optim

    model = _trained()
    state = dict(model.__dict__)
    del state["_mixture"], state["_btyd"]
    state["_advantage"], state["_gamma"] = 3.0, 0.99
    old_platt = linear_model.LogisticRegression(optimizer=optim.SGD(0.05), intercept_lr=0.05)
    for _x, p, y in _stream(300, 8):
        old_platt.learn_one({ONNX_LOGIT: math.log(p / (1 - p))}, y)
    state["_platt"] = old_platt
    loaded = ChurnBlend.__new__(ChurnBlend)
    loaded.__setstate__(state)
    assert loaded._mixture.advantage == 3.0 and loaded.weight_online == pytest.approx(
        _sigmoid(3.0)
    )
    assert loaded._p_calibrated(0.3) == pytest.approx(
        old_platt.predict_proba_one({ONNX_LOGIT: math.log(0.3 / 0.7)})[True], abs=1e-9
    )
    assert loaded.shares(True)[2] > 0  # the new expert starts level with calibrated ONNX
    loaded.learn({"f1": 0.0}, 0.5, True, 0.8)
