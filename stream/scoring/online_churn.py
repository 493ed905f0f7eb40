"""Churn probability: the offline ONNX model, corrected online for the shop actually streaming.

The ONNX model was trained on some shops' histories; a new shop has other volumes, prices and
rhythms. So the published probability is a mixture of two experts, both learning online from
this shop's delayed labels,

    p = w * p_online + (1 - w) * p_calibrated

- ``p_calibrated`` is the ONNX probability recalibrated for this shop (Platt scaling: a River
  logistic regression on ``onnx_logit`` alone). It is monotone in the ONNX score, so it keeps
  the offline model's ranking and only fixes the shop's base rate and the model's confidence.
- ``p_online`` comes from a River logistic regression over the shop-agnostic features *and*
  ``onnx_logit`` (a stacker): it can learn relationships the offline model never saw.

Comparing the stacker with the *calibrated* ONNX model matters: against the raw ONNX score the
stacker would win on calibration alone (a new shop's churn rate differs) even when it ranks
users worse, and the published ranking would get worse while its log-loss got better.

The weight ``w`` is an exponentially discounted Bayesian mixture (Hedge with learning rate 1,
the optimal rate for log-loss, which is 1-exp-concave)::

    A <- gamma * A + (logloss(p_calibrated) - logloss(p_online))  # per label, progressive
    w  = sigmoid(eta * A)                                      # eta = 1 by default

``A`` is the online expert's advantage, summed over recent labels with a half-life of
``half_life`` labels (``gamma = 2 ** (-1 / half_life)``), so old evidence fades and the blend
can move back when the winner changes. Until ``min_labels`` labels have been seen the raw ONNX
probability is published: both online experts are still near their zero initialisation.

Drift: ``drift.ADWIN`` watches the ONNX model's per-label log-loss (the frozen expert is the
one that cannot follow a change). When it flags a change *and* the loss went up (a
degradation — ADWIN also flags improvements, which need no reaction), the
pre-drift evidence is judged stale: the ONNX model's ranking is frozen and cannot follow the
shop, the stacker can. So ``A`` is raised to at least ``logit(drift_weight) / eta`` (``w`` jumps to
at least ``drift_weight``, 0.75 by default; never lowered) and then decays back towards what new
labels say. ``drifts`` counts these events and ``learn`` returns True so the caller can log
and meter it. Before ``min_labels`` a drift is still counted and the advantage still raised,
but ``w`` stays 0 until the online learner has seen enough labels.

Nothing here reads a clock: the learner's time is the order in which labels arrive.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np
from river import base, compose, drift, linear_model, metrics, optim, preprocessing, utils

__all__ = ["ONNX_LOGIT", "ChurnBlend"]

#: The feature key under which the ONNX probability's logit reaches the online learner.
ONNX_LOGIT = "onnx_logit"

_LOGIT_EPS = 1e-6  # keeps logit(p_onnx) finite
_CLIP = 5.0
_MIN_WEIGHT = 1e-6  # below it the online expert is left out of the blend
_LOSS_EPS = 1e-4  # per-label losses for the mixture and ADWIN are at most -log(1e-4) ≈ 9.2


def _clip(p: float, eps: float) -> float:
    return min(max(p, eps), 1.0 - eps)


def _logit(p: float) -> float:
    p = _clip(p, _LOGIT_EPS)
    return math.log(p / (1.0 - p))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _clip_scaled(x: dict[str, float]) -> dict[str, float]:
    """Standardised inputs clipped to ±5: a feature the learner has nearly always seen at one
    value (the hours since the last click, when scores are made at clicks) would otherwise turn
    an idle user into a 100-sigma input and saturate the probability."""
    # Comparisons rather than min/max calls: this runs for every prediction and label.
    return {k: (_CLIP if v > _CLIP else -_CLIP if v < -_CLIP else v) for k, v in x.items()}


def _log_loss(y: bool, p: float) -> float:
    p = _clip(p, _LOSS_EPS)
    return -math.log(p if y else 1.0 - p)


class ChurnBlend(base.Base):
    """ONNX churn probability blended with an online stacker that learns from delayed labels.

    Parameters
    ----------
    lr
        SGD learning rate of the online logistic regression (weights and intercept: the shop's
        base churn rate is the first thing it has to learn).
    seed
        Accepted so every scoring learner takes the same arguments; this learner has no
        randomness (zero-initialised weights, plain SGD), so any seed gives the same run.
    drift_delta
        ADWIN's confidence; smaller flags fewer, larger changes.
    window
        Labels in the rolling ROC AUC and log-loss of ``metrics()``.
    min_labels
        Labels before the online learner gets any weight.
    half_life
        Labels after which an expert's past log-loss counts half in the mixture weight.
    eta
        Mixture learning rate; 1 is the Bayesian mixture (optimal for log-loss).
    drift_weight
        Least online weight right after a detected degradation.

    Examples
    --------
    The ONNX model is confident and wrong on this shop (it says 0.8 for everyone, but users
    with ``visits`` churn and the others don't); the online learner finds out.

    >>> import random
    >>> rng = random.Random(7)
    >>> model = ChurnBlend(min_labels=50, lr=0.05)
    >>> model.predict({"visits": 0.0}, 0.8), model.weight_online
    (0.8, 0.0)
    >>> for _ in range(400):
    ...     visits = float(rng.random() < 0.5)
    ...     _ = model.learn({"visits": visits}, 0.8, y=visits == 0.0)
    >>> model.labels_seen, model.weight_online > 0.99
    (400, True)
    >>> model.predict({"visits": 1.0}, 0.8) < 0.2 < 0.8 < model.predict({"visits": 0.0}, 0.8)
    True
    >>> m = model.metrics()
    >>> m["roc_auc_blend"] > 0.95, round(m["roc_auc_onnx"], 1), m["log_loss_blend"] < m["log_loss_onnx"]
    (True, 0.5, True)
    """

    def __init__(
        self,
        *,
        lr: float = 0.01,
        seed: int = 0,
        drift_delta: float = 0.002,
        window: int = 1000,
        min_labels: int = 200,
        half_life: float = 250.0,
        eta: float = 1.0,
        drift_weight: float = 0.75,
    ) -> None:
        if not 0.0 < drift_weight < 1.0:
            raise ValueError("drift_weight must be in (0, 1)")
        if half_life <= 0 or window <= 0 or eta <= 0 or min_labels < 0:
            raise ValueError("half_life, window and eta must be positive, min_labels >= 0")
        self.lr = lr
        self.seed = seed
        self.drift_delta = drift_delta
        self.window = window
        self.min_labels = min_labels
        self.half_life = half_life
        self.eta = eta
        self.drift_weight = drift_weight

        self._model = (
            preprocessing.StandardScaler()
            | compose.FuncTransformer(_clip_scaled)
            | linear_model.LogisticRegression(optimizer=optim.SGD(lr), intercept_lr=lr)
        )
        # Platt scaling of the ONNX logit; a logit's scale is fixed, so no scaler is needed and
        # a larger step converges in a few hundred labels.
        self._platt = linear_model.LogisticRegression(optimizer=optim.SGD(0.05), intercept_lr=0.05)
        self._gamma = 2.0 ** (-1.0 / half_life)
        self._advantage = 0.0  # decayed sum of logloss(onnx) - logloss(online)
        self._labels = 0
        self._drifts = 0
        self._adwin = drift.ADWIN(delta=drift_delta)
        self._auc_blend = metrics.RollingROCAUC(window_size=window)
        self._auc_onnx = metrics.RollingROCAUC(window_size=window)
        self._loss_blend = utils.Rolling(metrics.LogLoss, window_size=window)
        self._loss_onnx = utils.Rolling(metrics.LogLoss, window_size=window)
        self._recent: deque[bool] = deque(maxlen=window)  # the labels the rolling AUCs hold

    # -- reading -----------------------------------------------------------------------------

    @property
    def weight_online(self) -> float:
        """The online learner's share ``w`` of the blend (0 until ``min_labels`` labels)."""
        if self._labels < self.min_labels:
            return 0.0
        return _sigmoid(self.eta * self._advantage)

    @property
    def reads_features(self) -> bool:
        """Whether ``predict`` reads its ``x`` at present: only once the online expert has
        weight (before, or while the calibrated ONNX expert wins outright, ``x`` is unused
        and callers may skip building it)."""
        return self._labels >= self.min_labels and self.weight_online >= _MIN_WEIGHT

    @property
    def labels_seen(self) -> int:
        return self._labels

    @property
    def drifts(self) -> int:
        """Degradations ADWIN detected in the ONNX model's log-loss so far."""
        return self._drifts

    def _features(self, x: Mapping[str, float], p_onnx: float) -> dict[str, float]:
        # A new dict: the caller's is never mutated, and onnx_logit always matches p_onnx.
        return {**x, ONNX_LOGIT: _logit(p_onnx)}

    def _p_online(self, features: dict[str, float]) -> float:
        return float(self._model.predict_proba_one(features).get(True, 0.0))

    def _p_calibrated(self, p_onnx: float) -> float:
        return float(self._platt.predict_proba_one({ONNX_LOGIT: _logit(p_onnx)}).get(True, 0.0))

    def predict(self, x: Mapping[str, float], p_onnx: float) -> float:
        """The blended churn probability. ``x`` holds shop-agnostic features; ``onnx_logit`` is
        derived from ``p_onnx`` here (a value for it in ``x`` is replaced)."""
        if self._labels < self.min_labels:
            return float(p_onnx)
        w = self.weight_online
        calibrated = self._p_calibrated(p_onnx)
        if w < _MIN_WEIGHT:
            return calibrated
        return w * self._p_online(self._features(x, p_onnx)) + (1.0 - w) * calibrated

    def _blend(self, p_onnx: float, p_online: float, p_calibrated: float) -> float:
        """``predict`` from the experts' probabilities, already computed."""
        if self._labels < self.min_labels:
            return float(p_onnx)
        w = self.weight_online
        if w < _MIN_WEIGHT:
            return p_calibrated
        return w * p_online + (1.0 - w) * p_calibrated

    def predict_many(
        self, xs: Sequence[Mapping[str, float]], p_onnx: Sequence[float]
    ) -> list[float]:
        """``predict`` over a micro-batch (same results as one call per user)."""
        if len(xs) != len(p_onnx):
            raise ValueError(f"{len(xs)} feature dicts but {len(p_onnx)} ONNX probabilities")
        return [self.predict(x, p) for x, p in zip(xs, p_onnx, strict=True)]

    def predict_matrix(
        self, X: np.ndarray | None, columns: Sequence[str], p_onnx: np.ndarray
    ) -> np.ndarray:
        """``predict`` for a whole micro-batch at once, from the experts' parameters: row ``i``
        of ``X`` holds ``x[c] for c in columns`` of the ``i``-th user (``onnx_logit`` is
        derived from ``p_onnx``, as in ``predict``). Equal to one ``predict`` per row up to
        the last bits of the floating point sums. ``X`` is read only when ``reads_features``;
        callers may pass None otherwise.

        Why not River's ``predict_proba_many``: it goes through a data frame per call, which
        costs more than a micro-batch of a few users' ``predict_proba_one``; the parameters
        (the scaler's running means and variances, the regressions' weights and intercepts)
        are the models' public state and the arithmetic is River's own (``transform_one``,
        ``_clip_scaled``, the loss's ``mean_func`` over an array)."""
        p_onnx = np.asarray(p_onnx, dtype=np.float64)
        if self._labels < self.min_labels:
            return p_onnx.copy()
        clipped = np.clip(p_onnx, _LOGIT_EPS, 1.0 - _LOGIT_EPS)
        logit = np.log(clipped / (1.0 - clipped))
        platt = self._platt
        calibrated = platt.loss.mean_func(
            logit * platt.weights.get(ONNX_LOGIT, 0.0) + platt.intercept
        )
        w = self.weight_online
        if w < _MIN_WEIGHT:
            return calibrated
        if X is None:
            raise ValueError("the online expert has weight: X is needed (see reads_features)")
        scaler, _clip_step, model = self._model.steps.values()
        names = [c for c in columns if c != ONNX_LOGIT]
        keep = [n for n, c in enumerate(columns) if c != ONNX_LOGIT]
        matrix = np.column_stack([np.asarray(X, dtype=np.float64)[:, keep], logit])
        names.append(ONNX_LOGIT)
        means = np.array([scaler.means.get(c, 0.0) for c in names])
        variances = np.array([scaler.vars.get(c, 0.0) for c in names])
        # transform_one: (x - mean) / std, and 0.0 for a feature without variance yet.
        seen = variances > 0
        std = np.where(seen, np.sqrt(np.where(seen, variances, 1.0)), 1.0)
        scaled = np.where(seen, (matrix - means) / std, 0.0)
        scaled = np.clip(scaled, -_CLIP, _CLIP)
        weights = np.array([model.weights.get(c, 0.0) for c in names])
        online = model.loss.mean_func(scaled @ weights + model.intercept)
        return w * online + (1.0 - w) * calibrated

    def metrics(self) -> dict[str, float]:
        """Rolling (last ``window`` labels) ROC AUC and log-loss of the blend and of ONNX alone,
        both measured on each label before learning from it (progressive validation).

        NaN where there is no figure yet: log-loss before the first label, AUC until the
        window holds both classes (River's rolling AUC reads 0.0 then, which looks like a
        broken model on a dashboard).
        """
        nan = float("nan")
        recent = getattr(self, "_recent", None)  # absent in checkpoints from before it was kept
        positives = sum(recent) if recent else 0
        ranked = recent is not None and 0 < positives < len(recent)
        labelled = self._labels > 0
        return {
            "roc_auc_blend": float(self._auc_blend.get()) if ranked else nan,
            "roc_auc_onnx": float(self._auc_onnx.get()) if ranked else nan,
            "log_loss_blend": float(self._loss_blend.get()) if labelled else nan,
            "log_loss_onnx": float(self._loss_onnx.get()) if labelled else nan,
        }

    # -- learning ----------------------------------------------------------------------------

    def learn(self, x: Mapping[str, float], p_onnx: float, y: bool) -> bool:
        """Learn one delayed label (``y=True``: the user churned) for a past prediction made
        from ``x`` and ``p_onnx``. Returns True when a drift (degradation) was detected."""
        y = bool(y)
        p_onnx = float(p_onnx)
        features = self._features(x, p_onnx)
        p_online = self._p_online(features)
        p_calibrated = self._p_calibrated(p_onnx)
        p_blend = self._blend(p_onnx, p_online, p_calibrated)

        self._auc_blend.update(y, p_blend)
        self._auc_onnx.update(y, p_onnx)
        recent = self.__dict__.get("_recent")
        if recent is None:
            recent = self._recent = deque(maxlen=self.window)
        recent.append(y)
        self._loss_blend.update(y, p_blend)
        self._loss_onnx.update(y, p_onnx)

        self._advantage = self._gamma * self._advantage + (
            _log_loss(y, p_calibrated) - _log_loss(y, p_online)
        )
        self._model.learn_one(features, y)
        self._platt.learn_one({ONNX_LOGIT: features[ONNX_LOGIT]}, y)
        self._labels += 1

        before = self._adwin.estimation
        self._adwin.update(_log_loss(y, p_onnx))
        if self._adwin.drift_detected and self._adwin.estimation > before:
            self._drifts += 1
            floor = _logit(self.drift_weight) / self.eta
            self._advantage = max(self._advantage, floor)
            return True
        return False
