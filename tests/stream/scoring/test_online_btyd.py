"""The partition's BTYD expert: a replay-stable sample, refits from it, predictions from the
feature core's vectors judged on what generated customers did next, and its checkpoint."""

from __future__ import annotations

import dataclasses
import pickle
import random

import numpy as np
import orjson
import pytest

from offline_train.metrics import roc_auc
from stream.contract.validation import Limits, decode_event
from stream.features import FeatureConfig, UserState, apply_event, feature_vector
from stream.scoring import safe_pickle
from stream.scoring.btyd import BgNbd, MbgNbd
from stream.scoring.online_btyd import BtydExpert
from stream.tools.generator.orders_only import OrdersOnlyConfig, generate_orders_only

DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def shop():
    """6,000 generated customers: their orders before day 180, their feature vectors at day
    180 (the real feature core), and whether they ordered in the 30 days after."""
    config = OrdersOnlyConfig(users=6000, days=270, seed=7)
    events, _truth = generate_orders_only(config)
    cut = config.start_ms + 180 * DAY_MS
    features, states = FeatureConfig(), {}
    before, ordered_after = [], set()
    for raw in events:
        if raw["ts"] >= cut:
            if raw["ts"] < cut + 30 * DAY_MS:
                ordered_after.add(raw["user_id"])
            continue
        event = decode_event("order", orjson.dumps(raw), now_ms=None, limits=Limits())
        state = states.setdefault(event.user_id, UserState(event.user_id))
        apply_event(state, event, features)
        before.append(raw)
    users = sorted(states)
    vectors = [feature_vector(states[u], cut, features) for u in users]
    churned = np.array([u not in ordered_after for u in users], dtype=float)
    return cut, before, vectors, churned


def _fed(orders, **kwargs) -> BtydExpert:
    expert = BtydExpert(**kwargs)
    for raw in orders:
        expert.observe(raw["user_id"], raw["ts"], raw["total"])
    return expert


def test_the_sample_is_bounded_and_the_same_whatever_the_order(shop):
    _cut, orders, _vectors, _churned = shop
    expert = _fed(orders, sample_size=1000)
    shuffled = list(orders)
    random.Random(1).shuffle(shuffled)
    again = _fed(shuffled, sample_size=1000)
    assert 500 < len(expert) <= 1000
    assert expert._sample.keys() == again._sample.keys()

    # A sampled customer's summary holds all their orders, whatever their order.
    def rows(e: BtydExpert) -> list[tuple]:
        return sorted(
            (first, last, n, round(spend, 6)) for first, last, n, spend in e._sample.values()
        )

    assert rows(expert) == rows(again)
    assert sum(e[2] for e in expert._sample.values()) > len(expert)


def test_refits_come_every_n_orders_and_fit_the_sample(shop):
    cut, orders, _vectors, _churned = shop
    expert = _fed(orders[:999], refit_every=1000)
    assert not expert.due()
    expert.observe(orders[999]["user_id"], orders[999]["ts"], orders[999]["total"])
    assert expert.due()
    expert = _fed(orders)
    assert expert.refit(cut) and expert.fits == 1 and not expert.due()
    sample = np.array(list(expert._sample.values()), dtype=float)
    T = (cut - sample[:, 0]) / DAY_MS
    direct = MbgNbd.fit(sample[:, 2] - 1, (sample[:, 1] - sample[:, 0]) / DAY_MS, T)
    assert expert.bgnbd.r / expert.bgnbd.alpha == pytest.approx(direct.r / direct.alpha, rel=1e-3)
    assert expert.gamma_gamma.population_mean == pytest.approx(
        np.mean(sample[:, 3] / sample[:, 2]), rel=0.2
    )


def test_predictions_from_feature_vectors_rank_and_are_calibrated(shop):
    """The expert fitted on its sample, judged on all 6,000 customers' next 30 days."""
    cut, orders, vectors, churned = shop
    expert = _fed(orders)
    expert.refit(cut)
    prediction = expert.predict(vectors, horizons_days=[30.0, 90.0], period_days=365.0)
    p30 = prediction.p_no_order[30.0]
    assert not np.isnan(p30).any()  # every one of them has ordered
    assert abs(p30.mean() - churned.mean()) < 0.03
    assert roc_auc(churned, p30) > 0.7
    # P(alive) is not "orders within 30 days" (a slow buyer is alive and quiet), but it ranks it.
    assert roc_auc(churned, -prediction.p_alive) > 0.62
    # BG/NBD would take every one-time buyer as alive, and rank the churners backwards here.
    s = BtydExpert.summaries(vectors)
    bg = BgNbd(*dataclasses.astuple(expert.bgnbd))
    assert roc_auc(churned, -bg.p_alive(s["x"], s["t_x"], s["T"])) < 0.5
    assert np.all(prediction.p_no_order[90.0] <= p30 + 1e-12)
    assert np.all(prediction.clv >= 0) and prediction.clv.mean() > 0


def test_a_visitor_who_never_ordered_gets_no_btyd_figures():
    expert = BtydExpert()
    visitor = [0.0] * len(feature_vector(UserState("v"), 0, FeatureConfig()))
    prediction = expert.predict([visitor], horizons_days=[30.0], period_days=365.0)
    assert np.isnan(prediction.p_alive[0]) and np.isnan(prediction.clv[0])


def test_the_checkpoint_is_plain_data_and_round_trips(shop):
    cut, orders, vectors, _churned = shop
    expert = _fed(orders[:3000], sample_size=800)
    expert.refit(cut)
    data = pickle.dumps(expert, protocol=pickle.HIGHEST_PROTOCOL)
    for loaded in (pickle.loads(data), safe_pickle.loads(data)):
        assert loaded._sample == expert._sample
        assert (loaded.bgnbd, loaded.gamma_gamma, loaded.threshold) == (
            expert.bgnbd,
            expert.gamma_gamma,
            expert.threshold,
        )
        a = loaded.predict(vectors[:50], [30.0], 365.0).p_no_order[30.0]
        assert np.array_equal(a, expert.predict(vectors[:50], [30.0], 365.0).p_no_order[30.0])
    assert len(data) < 100 + 40 * len(expert) + 1000


def test_a_forged_sample_is_refused():
    expert = BtydExpert()
    state = expert.__getstate__()
    state["_sample"] = b"\x00" * 7
    with pytest.raises(ValueError, match="packed records"):
        BtydExpert.__new__(BtydExpert).__setstate__(state)


def test_a_failed_fit_keeps_the_last_parameters_and_waits_for_more_orders(shop, monkeypatch):
    cut, orders, _vectors, _churned = shop
    expert = _fed(orders, refit_every=100)
    before = expert.bgnbd

    def broken(*args, **kwargs):
        raise RuntimeError("the optimiser gave up")

    monkeypatch.setattr(MbgNbd, "fit", classmethod(broken))
    assert expert.due() and not expert.refit(cut)
    assert expert.bgnbd == before and expert.fits == 0 and not expert.due()
