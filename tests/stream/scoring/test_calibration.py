"""WindowedPlatt: a Platt scaling that the order of labels within its window cannot move."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
import pytest

from stream.scoring.calibration import WindowedPlatt


def _labels(n: int, seed: int, slope: float = 0.6, intercept: float = 0.4):
    """An expert's logits and outcomes drawn from a known calibration."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        z = rng.gauss(0.5, 2.0)
        p = 1.0 / (1.0 + math.exp(-(slope * z + intercept)))
        out.append((z, rng.random() < p))
    return out


def _fitted(labels, **kwargs) -> WindowedPlatt:
    platt = WindowedPlatt(**kwargs)
    for z, y in labels:
        platt.learn(z, y)
    platt.refit()
    return platt


def test_the_fit_does_not_depend_on_the_order_labels_came_in():
    """The same labels, shuffled or in bursts of one outcome (all churned first), give the
    same calibration: what an SGD-fitted Platt scaling gets wrong on a stream."""
    labels = _labels(3000, 1)
    bursts = sorted(labels, key=lambda zy: not zy[1])
    shuffled = _fitted(labels, window=5000)
    bursty = _fitted(bursts, window=5000)
    assert bursty.slope == pytest.approx(shuffled.slope, abs=1e-6)
    assert bursty.intercept == pytest.approx(shuffled.intercept, abs=1e-6)
    # ... and it is the calibration the labels were drawn from.
    assert shuffled.slope == pytest.approx(0.6, abs=0.08)
    assert shuffled.intercept == pytest.approx(0.4, abs=0.15)


def test_only_the_window_counts():
    old = [(z, not y) for z, y in _labels(2000, 2)]  # the opposite relationship, long ago
    platt = _fitted(old + _labels(1000, 3), window=1000)
    assert len(platt) == 1000
    assert platt.slope == pytest.approx(0.6, abs=0.12)


def test_the_prior_holds_before_labels_and_yields_to_them():
    platt = WindowedPlatt(start=(1.0, 0.0), refit_every=1)
    assert platt.predict(2.0) == pytest.approx(1 / (1 + math.exp(-2.0)))
    platt.learn(3.0, False)  # one surprising label moves it a little, not all the way
    assert 0.5 < platt.slope < 1.0
    many = _fitted(_labels(4000, 4), start=(1.0, 0.0))
    assert many.slope == pytest.approx(0.6, abs=0.08)


def test_predict_many_equals_predict():
    platt = _fitted(_labels(500, 5))
    logits = np.array([-40.0, -3.0, 0.0, 0.7, 5.0, 40.0])
    got = platt.predict_many(logits)
    assert np.allclose(got, [platt.predict(z) for z in logits], rtol=0, atol=1e-12)


def test_a_checkpoint_round_trips_and_a_forged_window_is_refused():
    platt = _fitted(_labels(300, 6), window=400, refit_every=7)
    again = pickle.loads(pickle.dumps(platt))
    assert (again.slope, again.intercept, len(again)) == (platt.slope, platt.intercept, 300)
    assert list(again._labels) == list(platt._labels) and again._labels.maxlen == 400
    for z, y in _labels(50, 7):
        platt.learn(z, y)
        again.learn(z, y)
    assert (again.slope, again.intercept) == (platt.slope, platt.intercept)
    for forged in (b"\x00" * 15, b"\x00" * 16 * 401):
        state = {**platt.__getstate__(), "_labels": forged}
        with pytest.raises(ValueError):
            WindowedPlatt.__new__(WindowedPlatt).__setstate__(state)
    outcome_two = np.array([0.0, 2.0]).tobytes()
    with pytest.raises(ValueError, match="0/1 outcomes"):
        WindowedPlatt.__new__(WindowedPlatt).__setstate__(
            {**platt.__getstate__(), "_labels": outcome_two}
        )


def test_bad_arguments_fail_fast():
    with pytest.raises(ValueError):
        WindowedPlatt(window=1)
    with pytest.raises(ValueError):
        WindowedPlatt(refit_every=0)
