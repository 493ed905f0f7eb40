"""Platt scaling fitted to a window of recent labels, not by stochastic steps.

Why not River's ``LogisticRegression`` with SGD, as a Platt scaling usually is online: the
labels of a stream arrive in bursts of one outcome. When a clock tick re-scores every idle
user whose churn label fell due, those labels are delivered together, nearly all "churned",
and the users are scored again right after. A constant-step SGD follows the burst (on a
generated orders-only shop its intercept ended at +1.1 where the calibration needed +0.4) and
the scores published right after it were 0.11 too high on average. The maximum-likelihood fit
over the last ``window`` labels does not depend on their order within the window, so a burst
counts for what it holds, no more.

The fit is Newton's method on the two parameters (a 2x2 system, with step halving),
warm-started and run every ``refit_every`` labels, with a Gaussian prior centred on the starting parameters: before any
label the calibration is the start (the identity, say), and a handful of labels moves it
only as far as they can tell.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from typing import Any

import numpy as np

__all__ = ["WindowedPlatt"]

#: One label in the checkpoint: the logit it was predicted with and the outcome (0 or 1).
_LABEL = struct.Struct("<dd")
_NEWTON_STEPS = 12
_LOGIT_BOUND = 30.0


class WindowedPlatt:
    """``p = sigmoid(slope * logit + intercept)``, fitted to the last ``window`` labels.

    Examples
    --------
    An expert whose probabilities are too extreme (its logits twice what they should be):

    >>> import random
    >>> rng = random.Random(1)
    >>> platt = WindowedPlatt(window=4000, refit_every=100)
    >>> for _ in range(4000):
    ...     z = rng.gauss(0, 2)
    ...     platt.learn(2 * z, rng.random() < 1 / (1 + math.exp(-z)))
    >>> round(platt.slope, 1), round(platt.intercept, 1)
    (0.5, 0.0)
    >>> round(platt.predict(4.0), 1)  # the expert said 0.98
    0.9
    """

    def __init__(
        self,
        *,
        window: int = 5000,
        refit_every: int = 100,
        start: tuple[float, float] = (1.0, 0.0),
        prior_labels: float = 20.0,
    ) -> None:
        if window < 2 or refit_every < 1 or prior_labels < 0:
            raise ValueError("window >= 2, refit_every >= 1 and prior_labels >= 0 are needed")
        self.window = window
        self.refit_every = refit_every
        self.start = (float(start[0]), float(start[1]))
        #: The prior's weight, in labels: its precision is this times a label's at p = 0.5.
        self.prior_labels = prior_labels
        self.slope, self.intercept = self.start
        self._labels: deque[tuple[float, float]] = deque(maxlen=window)
        self._since_fit = 0
        self.seen = 0

    def __len__(self) -> int:
        return len(self._labels)

    def predict(self, logit: float) -> float:
        z = self.slope * _bound(logit) + self.intercept
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def predict_many(self, logits: np.ndarray) -> np.ndarray:
        """``predict`` over an array (numpy's exponential: equal up to the last bits)."""
        z = self.slope * np.clip(logits, -_LOGIT_BOUND, _LOGIT_BOUND) + self.intercept
        return 0.5 * (1.0 + np.tanh(0.5 * z))

    def learn(self, logit: float, y: bool) -> None:
        self._labels.append((_bound(logit), 1.0 if y else 0.0))
        self.seen += 1
        self._since_fit += 1
        if self._since_fit >= self.refit_every:
            self.refit()

    def refit(self) -> None:
        """The MAP fit over the window (Newton's method from the current parameters)."""
        self._since_fit = 0
        if not self._labels:
            return
        data = np.array(self._labels, dtype=np.float64)
        x, y = data[:, 0], data[:, 1]
        # The prior: precision prior_labels * 0.25 on each parameter (a label's at p = 0.5).
        precision = 0.25 * self.prior_labels
        centre = np.array(self.start)

        def loss(theta: np.ndarray) -> float:
            z = theta[0] * x + theta[1]
            # -log-likelihood: log(1 + e^z) - y z, stably
            nll = np.logaddexp(0.0, z) - y * z
            return float(nll.sum() + 0.5 * precision * ((theta - centre) ** 2).sum())

        theta = np.array([self.slope, self.intercept])
        current = loss(theta)
        for _ in range(_NEWTON_STEPS):
            p = 0.5 * (1.0 + np.tanh(0.5 * (theta[0] * x + theta[1])))
            w = p * (1.0 - p)
            residual = p - y
            gradient = np.array([residual @ x, residual.sum()]) + precision * (theta - centre)
            hessian = np.array([[w @ (x * x), w @ x], [w @ x, w.sum()]])
            hessian += (precision + 1e-9) * np.eye(2)
            step = np.linalg.solve(hessian, gradient)
            # Newton's step, halved until the objective falls: far from the optimum (the
            # window's outcomes turned since the last fit) a full step can overshoot.
            for _halving in range(30):
                trial = theta - step
                value = loss(trial)
                if value <= current:
                    break
                step = step / 2.0
            else:
                break
            theta, current = trial, value
            if float(np.abs(step).max()) < 1e-8:
                break
        if np.all(np.isfinite(theta)):
            self.slope, self.intercept = float(theta[0]), float(theta[1])

    # -- checkpoint -------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Plain data only: the window as one packed ``bytes`` (``_LABEL`` per label)."""
        state = dict(self.__dict__)
        state["_labels"] = b"".join(_LABEL.pack(x, y) for x, y in self._labels)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        packed = state.get("_labels", b"")
        window = state.get("window")
        if not isinstance(packed, bytes) or len(packed) % _LABEL.size:
            raise ValueError("a calibration window is packed labels")
        if type(window) is not int or not 2 <= window <= 10**6:
            raise ValueError("a calibration window's length is a whole number")
        labels = list(_LABEL.iter_unpack(packed))
        if len(labels) > window or not all(
            abs(x) <= _LOGIT_BOUND and y in (0.0, 1.0) for x, y in labels
        ):
            raise ValueError("a calibration window holds bounded logits and 0/1 outcomes")
        state = dict(state)
        state["_labels"] = deque(labels, maxlen=window)
        self.__dict__.update(state)


def _bound(logit: float) -> float:
    return min(max(float(logit), -_LOGIT_BOUND), _LOGIT_BOUND)
