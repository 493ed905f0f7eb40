"""How much the churn blend trusts each of its experts: an exponentially discounted Bayesian
mixture (Hedge with learning rate 1, the optimal rate for log-loss, which is 1-exp-concave).

Three experts (``stream.scoring.online_churn``): the calibrated ONNX model, the online stacker,
and the calibrated BTYD expert, which only speaks for customers (users with an order). Every
advantage is an expert's log-loss edge over the calibrated ONNX expert, summed over recent
labels with a half-life of ``half_life`` labels (``gamma = 2 ** (-1 / half_life)``), so old
evidence fades and the blend can move back when the winner changes::

    A   <- gamma * A   + (logloss(calibrated) - logloss(online))   # every label
    A_c <- gamma * A_c + (logloss(calibrated) - logloss(online))   # labels with a BTYD view
    B   <- gamma * B   + (logloss(calibrated) - logloss(btyd))     # labels with a BTYD view

A user without a BTYD view gets ``w = sigmoid(eta * A)`` of the stacker and the rest of the
calibrated ONNX model; a customer gets ``softmax(0, eta * A_c, eta * B)``. Customers have a
mixture of their own, fed only the labels the BTYD expert took part in, so a shop of visitors
neither drowns nor fades the record of the experts on its customers.

The stacker's loss is that of what it said when the prediction was made (``ChurnBlend.learn``'s
``said``), and the half-life is long (2,000 labels by default): labels come in bursts of one
outcome (the idle users whose horizon ended all at once), and a mixture with a short memory
follows whichever expert did best on the last burst.
"""

from __future__ import annotations

import math

__all__ = ["ExpertMixture"]

#: Below this share the stacker is left out of the blend (its prediction need not be made).
MIN_WEIGHT = 1e-6


class ExpertMixture:
    """The advantages of the stacker and the BTYD expert over the calibrated ONNX model.

    >>> mixture = ExpertMixture(half_life=100)
    >>> mixture.shares(btyd=False), mixture.shares(btyd=True)
    ((0.5, 0.5, 0.0), (0.3333333333333333, 0.3333333333333333, 0.3333333333333333))
    >>> for _ in range(50):  # BTYD right on customers, the stacker on nobody
    ...     mixture.update(True, calibrated=0.5, online=0.4, btyd=0.9)
    >>> [round(w, 3) for w in mixture.shares(btyd=True)]
    [0.0, 0.0, 1.0]
    >>> round(mixture.shares(btyd=False)[1], 3)
    0.0
    """

    def __init__(self, *, half_life: float = 2000.0, eta: float = 1.0, drift_weight: float = 0.75):
        if half_life <= 0 or eta <= 0:
            raise ValueError("half_life and eta must be positive")
        if not 0.0 < drift_weight < 1.0:
            raise ValueError("drift_weight must be in (0, 1)")
        self.eta = eta
        self.drift_weight = drift_weight
        self.gamma = 2.0 ** (-1.0 / half_life)
        #: The stacker's advantage over every label, and over the labels with a BTYD view.
        self.advantage = 0.0
        self.customer_advantage = 0.0
        #: The BTYD expert's advantage over the labels with its view.
        self.btyd_advantage = 0.0

    def shares(self, btyd: bool) -> tuple[float, float, float]:
        """The shares of the calibrated ONNX, online and BTYD experts for a user the BTYD
        expert has a view of (``btyd``) or not; a stacker's share below ``MIN_WEIGHT`` is 0."""
        if not btyd:
            w = _sigmoid(self.eta * self.advantage)
            w = 0.0 if w < MIN_WEIGHT else w
            return 1.0 - w, w, 0.0
        online, expert = self.eta * self.customer_advantage, self.eta * self.btyd_advantage
        shares = _softmax3(0.0, online, expert)
        if shares[1] < MIN_WEIGHT:
            shares = _softmax3(0.0, -math.inf, expert)
        return shares

    def update(self, y: bool, *, calibrated: float, online: float, btyd: float | None) -> None:
        """One label ``y`` for the experts' probabilities (``btyd`` None: no BTYD view)."""
        gamma = self.gamma
        online_gain = log_loss(y, calibrated) - log_loss(y, online)
        self.advantage = gamma * self.advantage + online_gain
        if btyd is not None:
            self.customer_advantage = gamma * self.customer_advantage + online_gain
            self.btyd_advantage = gamma * self.btyd_advantage + (
                log_loss(y, calibrated) - log_loss(y, btyd)
            )

    def favour_online(self) -> None:
        """After a degradation of the ONNX model: the stacker's share rises to at least
        ``drift_weight`` against the calibrated ONNX model (never lowered)."""
        floor = math.log(self.drift_weight / (1.0 - self.drift_weight)) / self.eta
        self.advantage = max(self.advantage, floor)
        self.customer_advantage = max(self.customer_advantage, floor)


_LOSS_EPS = 1e-4  # per-label losses are at most -log(1e-4) ≈ 9.2


def log_loss(y: bool, p: float) -> float:
    p = min(max(p, _LOSS_EPS), 1.0 - _LOSS_EPS)
    return -math.log(p if y else 1.0 - p)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _softmax3(a: float, b: float, c: float) -> tuple[float, float, float]:
    top = max(a, b, c)
    ea, eb, ec = math.exp(a - top), math.exp(b - top), math.exp(c - top)
    total = ea + eb + ec
    return ea / total, eb / total, ec / total
