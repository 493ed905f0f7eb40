"""BG/NBD and Gamma-Gamma (``stream.scoring.btyd``): the reference implementation's fits and
predictions on its CDNOW data and on a generated shop, planted parameters recovered, and
churn probabilities calibrated against what the generated customers did next."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifetimes import BetaGeoFitter, GammaGammaFitter, ModifiedBetaGeoFitter
from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value

from stream.scoring.btyd import BgNbd, GammaGamma, MbgNbd, Prior
from stream.tools.generator.orders_only import OrdersOnlyConfig, generate_orders_only

DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def cdnow():
    """CDNOW's 2,357 customers (time in weeks), as Fader, Hardie and Lee fitted them."""
    data = load_cdnow_summary_data_with_monetary_value()
    return {name: data[name].to_numpy(dtype=float) for name in data.columns}


def _summaries(events, cut_ms: int, future_days: float):
    """Per customer acquired before ``cut_ms``: repeat orders, age at the last order and age
    at the cut (days), mean order value, and orders within ``future_days`` after the cut."""
    seen: dict[str, list[float]] = {}
    future: dict[str, int] = {}
    for event in events:
        user, ts = event["user_id"], event["ts"]
        if ts < cut_ms:
            first, _last, n, spend = seen.get(user, [ts, ts, 0, 0.0])
            seen[user] = [first, ts, n + 1, spend + event["total"]]
        elif ts < cut_ms + future_days * DAY_MS:
            future[user] = future.get(user, 0) + 1
    users = sorted(seen)
    first, last, n, spend = (np.array([seen[u][i] for u in users]) for i in range(4))
    return {
        "x": n - 1,
        "t_x": (last - first) / DAY_MS,
        "T": (cut_ms - first) / DAY_MS,
        "orders": n,
        "mean_value": spend / n,
        "future": np.array([future.get(u, 0) for u in users], dtype=float),
    }


@pytest.fixture(scope="module")
def shop():
    """A generated orders-only shop (BG/NBD with r=0.8, alpha=40/day, a=0.8, b=4), cut at day
    180 of 270, with what each customer did in the 90 days after."""
    config = OrdersOnlyConfig(users=6000, days=270, seed=5)
    events, _truth = generate_orders_only(config)
    return config, _summaries(events, config.start_ms + 180 * DAY_MS, 90)


def test_bgnbd_matches_the_reference_on_cdnow(cdnow):
    x, t_x, T = cdnow["frequency"], cdnow["recency"], cdnow["T"]
    reference = BetaGeoFitter().fit(x, t_x, T)
    ref = BgNbd(*(float(reference.params_[k]) for k in ("r", "alpha", "a", "b")))
    # The published estimates (Fader, Hardie and Lee 2005): r .243, alpha 4.414, a .793, b 2.426.
    ours = BgNbd.fit(x, t_x, T, prior=None)
    assert astuple(ours) == pytest.approx(astuple(ref), rel=2e-3)
    assert (ours.r, ours.alpha, ours.a, ours.b) == pytest.approx(
        (0.243, 4.414, 0.793, 2.426), abs=2e-3
    )
    assert ref.log_likelihood(x, t_x, T).sum() == pytest.approx(-9582.43, abs=0.05)
    # Same parameters, same predictions customer by customer.
    assert np.allclose(ref.p_alive(x, t_x, T), reference.conditional_probability_alive(x, t_x, T))
    for period in (1.0, 39.0, 52.0):
        expected = reference.conditional_expected_number_of_purchases_up_to_time(period, x, t_x, T)
        assert np.allclose(ref.expected_orders(x, t_x, T, period), expected, rtol=1e-9)


@pytest.mark.parametrize("which", ["cdnow", "shop"])
def test_mbgnbd_matches_the_reference(which, cdnow, shop):
    if which == "cdnow":
        x, t_x, T = cdnow["frequency"], cdnow["recency"], cdnow["T"]
    else:
        x, t_x, T = shop[1]["x"], shop[1]["t_x"], shop[1]["T"]
    reference = ModifiedBetaGeoFitter().fit(x, t_x, T)
    ref = MbgNbd(*(float(reference.params_[k]) for k in ("r", "alpha", "a", "b")))
    ours = MbgNbd.fit(x, t_x, T, prior=None)
    assert isinstance(ours, MbgNbd)
    # The likelihood is flat along a ridge of (a, b): both optimisers stop on it.
    assert astuple(ours) == pytest.approx(astuple(ref), rel=0.05)
    assert ours.log_likelihood(x, t_x, T).sum() == pytest.approx(
        ref.log_likelihood(x, t_x, T).sum(), abs=0.05
    )
    assert np.allclose(ref.p_alive(x, t_x, T), reference.conditional_probability_alive(x, t_x, T))
    for period in (1.0, 39.0, 90.0):
        expected = reference.conditional_expected_number_of_purchases_up_to_time(period, x, t_x, T)
        assert np.allclose(ref.expected_orders(x, t_x, T, period), expected, rtol=1e-9)


def test_gamma_gamma_matches_the_reference_on_cdnow(cdnow):
    repeat = cdnow["frequency"] > 0
    f, m = cdnow["frequency"][repeat], cdnow["monetary_value"][repeat]
    reference = GammaGammaFitter().fit(f, m)
    ref = GammaGamma(*(float(reference.params_[k]) for k in ("p", "q", "v")))
    ours = GammaGamma.fit(f, m)
    assert astuple(ours) == pytest.approx(astuple(ref), rel=2e-3)
    # The published estimates (Fader and Hardie 2013, note 025): p 6.25, q 3.74, v 15.44.
    assert (ours.p, ours.q, ours.v) == pytest.approx((6.25, 3.74, 15.44), abs=0.01)
    assert np.allclose(
        ref.expected_value(f, m), reference.conditional_expected_average_profit(f, m)
    )


def test_bgnbd_matches_the_reference_on_a_generated_shop(shop):
    _config, s = shop
    reference = BetaGeoFitter().fit(s["x"], s["t_x"], s["T"])
    ref = tuple(float(reference.params_[k]) for k in ("r", "alpha", "a", "b"))
    ours = BgNbd.fit(s["x"], s["t_x"], s["T"], prior=None)
    assert (ours.r, ours.alpha, ours.a, ours.b) == pytest.approx(ref, rel=5e-3)


def _simulate_bgnbd(model: BgNbd, customers: int, days: float, seed: int):
    """Customers drawn exactly as BG/NBD assumes: born uniformly over the first half of the
    period with a first order, then Poisson orders at their own rate, and after each repeat
    order dropping out with their own probability. (The orders-only generator also lets a
    customer drop out right after the first order, as the MBG/NBD variant does.)"""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(model.r, 1.0 / model.alpha, customers)
    dropouts = rng.beta(model.a, model.b, customers)
    births = rng.uniform(0.0, days / 2, customers)
    x, t_x = np.zeros(customers), np.zeros(customers)
    for i in range(customers):
        t = 0.0
        while True:
            t += rng.exponential(1.0 / rates[i])
            if births[i] + t >= days:
                break
            x[i] += 1
            t_x[i] = t
            if rng.random() < dropouts[i]:
                break
    return x, t_x, days - births


def test_the_planted_parameters_are_recovered():
    planted = BgNbd(r=0.8, alpha=40.0, a=0.8, b=4.0)
    x, t_x, T = _simulate_bgnbd(planted, 8000, 270.0, seed=3)
    fitted = BgNbd.fit(x, t_x, T)  # with the default prior: the data outweighs it
    assert fitted.r / fitted.alpha == pytest.approx(planted.r / planted.alpha, rel=0.1)
    assert fitted.a / (fitted.a + fitted.b) == pytest.approx(1 / 6, rel=0.2)
    assert fitted.r == pytest.approx(planted.r, rel=0.25)
    ll = planted.log_likelihood(x, t_x, T).sum()
    prior_only = BgNbd(*BgNbd.PRIOR.mode).log_likelihood(x, t_x, T).sum()
    fitted_ll = fitted.log_likelihood(x, t_x, T).sum()
    assert fitted_ll >= ll - 1.0 and fitted_ll > prior_only + 100


def test_churn_is_calibrated_on_what_customers_did_next(shop):
    """P(no order within 30 days), judged on the 30 days after the cut: overall and per
    decile of predicted risk; expected orders over the 90 days against the orders placed."""
    config, s = shop
    model = BgNbd.fit(s["x"], s["t_x"], s["T"])
    horizon_orders = s["future"]  # orders in the 90 days after the cut
    events, _truth = generate_orders_only(config)
    thirty = _summaries(events, config.start_ms + 180 * DAY_MS, 30)["future"]
    p_churn = model.p_no_order(s["x"], s["t_x"], s["T"], 30.0)
    observed = (thirty == 0).astype(float)
    assert abs(p_churn.mean() - observed.mean()) < 0.02
    order = np.argsort(p_churn)
    for decile in np.array_split(order, 10):
        assert abs(p_churn[decile].mean() - observed[decile].mean()) < 0.06
    expected = model.expected_orders(s["x"], s["t_x"], s["T"], 90.0)
    assert expected.sum() == pytest.approx(horizon_orders.sum(), rel=0.08)


def test_no_customers_give_the_prior_and_a_few_barely_move_it():
    assert BgNbd.fit([], [], []) == BgNbd(*BgNbd.PRIOR.mode)
    few = BgNbd.fit([2, 0, 5], [40.0, 0.0, 90.0], [100.0, 20.0, 120.0])
    assert few.r / few.alpha == pytest.approx(0.5 / 30.0, rel=1.0)
    assert GammaGamma.fit([], [], prior=GammaGamma.prior_for(40.0)).population_mean == (
        pytest.approx(40.0)
    )
    with pytest.raises(ValueError, match="no customers"):
        BgNbd.fit([], [], [], prior=None)
    with pytest.raises(ValueError, match="t_x <= T"):
        BgNbd.fit([1], [10.0], [5.0])


def test_a_stronger_prior_holds_the_fit_closer_to_its_mode(shop):
    _config, s = shop
    sample = slice(0, 200)
    args = (s["x"][sample], s["t_x"][sample], s["T"][sample])
    loose = BgNbd.fit(*args, prior=Prior(BgNbd.PRIOR.mode, scale=3.0))
    tight = BgNbd.fit(*args, prior=Prior(BgNbd.PRIOR.mode, scale=0.05))
    mode = np.log(BgNbd.PRIOR.mode)
    distance = [np.abs(np.log([m.r, m.alpha, m.a, m.b]) - mode).sum() for m in (loose, tight)]
    assert distance[1] < distance[0] and distance[1] < 0.5


@settings(max_examples=60, deadline=None)
@given(
    x=st.integers(0, 30),
    t_x=st.floats(0.0, 300.0),
    gap=st.floats(0.0, 300.0),
    more=st.floats(0.5, 200.0),
)
@pytest.mark.parametrize("kind", [BgNbd, MbgNbd])
def test_predictions_move_the_way_the_model_says(kind, x, t_x, gap, more):
    """The longer a customer stays away, the likelier they are dead and the likelier they
    stay quiet; a longer horizon never makes an order less likely."""
    model = kind(r=0.8, alpha=40.0, a=0.8, b=4.0)
    t_x = t_x if x else 0.0
    T = t_x + gap
    alive, later = model.p_alive(x, t_x, T), model.p_alive(x, t_x, T + more)
    assert 0.0 <= later <= alive + 1e-12 <= 1.0 + 1e-12
    if x == 0 and kind is BgNbd:
        assert alive == 1.0
    quiet_30, quiet_90 = (model.p_no_order(x, t_x, T, h) for h in (30.0, 90.0))
    assert 0.0 <= quiet_90 <= quiet_30 <= 1.0
    assert model.p_no_order(x, t_x, T + more, 30.0) >= quiet_30 - 1e-12
    e30, e365 = (model.expected_orders(x, t_x, T, t) for t in (30.0, 365.0))
    assert 0.0 <= e30 <= e365
