"""Churn probability: the offline ONNX model, corrected online for the shop actually streaming,
and blended with the shop's buy-till-you-die model.

The ONNX model was trained on some shops' histories; a new shop has other volumes, prices and
rhythms. So the published probability is a mixture of experts, all learning online from this
shop's delayed labels,

    p = w * p_online + (1 - w) * p_calibrated              (a user who never ordered)
    p = w_c * p_calibrated + w_o * p_online + w_b * p_btyd   (a customer)

- ``p_calibrated`` is the ONNX probability recalibrated for this shop (Platt scaling on
  ``onnx_logit``, fitted to a window of recent labels: ``stream.scoring.calibration``). It is
  monotone in the ONNX score, so it keeps the offline model's ranking and only fixes the shop's
  base rate and the model's confidence.
- ``p_online`` comes from a River logistic regression over the shop-agnostic features *and*
  ``onnx_logit`` (a stacker): it can learn relationships the offline model never saw.
- ``p_btyd`` is the partition's BTYD expert's probability of no order within the horizon
  (``stream.scoring.online_btyd``), recalibrated the same way from the identity. It only speaks
  for customers: MBG/NBD says nothing of a visitor who never ordered. Its view (P(no order),
  P(alive), expected orders) is also the stacker's input.

Comparing the stacker with the *calibrated* ONNX model matters: against the raw ONNX score the
stacker would win on calibration alone (a new shop's churn rate differs) even when it ranks
users worse, and the published ranking would get worse while its log-loss got better.

The weights are a Bayesian mixture over the experts' recent log-loss on the labels
(``stream.scoring.expert_mixture``), customers having a mixture of their own. Until
``min_labels`` labels have been seen the raw ONNX probability is published: the online experts
are still near their initialisation.

Drift: ``drift.ADWIN`` watches the ONNX model's per-label log-loss (the frozen expert is the
one that cannot follow a change). When it flags a change *and* the loss went up (a
degradation — ADWIN also flags improvements, which need no reaction), the
pre-drift evidence is judged stale: the ONNX model's ranking is frozen and cannot follow the
shop, the stacker can. So its share against the calibrated ONNX model jumps to at least
``drift_weight`` (0.75 by default; never lowered) and then decays back towards what new labels
say (``ExpertMixture.favour_online``). ``drifts`` counts these events and ``learn`` returns
True so the caller can log and meter it. Before ``min_labels`` a drift is still counted and
the advantage still raised, but ``w`` stays 0 until the online learner has seen enough labels.

Nothing here reads a clock: the learner's time is the order in which labels arrive.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from river import base, compose, drift, linear_model, metrics, optim, preprocessing, utils

from stream.scoring.calibration import WindowedPlatt
from stream.scoring.churn_matrix import CLIP as _CLIP
from stream.scoring.churn_matrix import LOGIT_EPS as _LOGIT_EPS
from stream.scoring.churn_matrix import ONNX_LOGIT, BatchPredictions
from stream.scoring.expert_mixture import ExpertMixture, log_loss

__all__ = ["ONNX_LOGIT", "ChurnBlend"]


def _clip(p: float, eps: float) -> float:
    return min(max(p, eps), 1.0 - eps)


def _logit(p: float) -> float:
    p = _clip(p, _LOGIT_EPS)
    return math.log(p / (1.0 - p))


def _clip_scaled(x: dict[str, float]) -> dict[str, float]:
    """Standardised inputs clipped to ±5: a feature the learner has nearly always seen at one
    value (the hours since the last click, when scores are made at clicks) would otherwise turn
    an idle user into a 100-sigma input and saturate the probability."""
    # Comparisons rather than min/max calls: this runs for every prediction and label.
    return {k: (_CLIP if v > _CLIP else -_CLIP if v < -_CLIP else v) for k, v in x.items()}


class ChurnBlend(BatchPredictions, base.Base):
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
        half_life: float = 2000.0,
        eta: float = 1.0,
        drift_weight: float = 0.75,
    ) -> None:
        if window <= 0 or min_labels < 0:
            raise ValueError("window must be positive, min_labels >= 0")
        mixture = ExpertMixture(half_life=half_life, eta=eta, drift_weight=drift_weight)
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
        # Platt scaling of the ONNX logit, over a window of labels (``WindowedPlatt``: a
        # constant-step SGD would follow the bursts labels come in).
        self._platt = WindowedPlatt()
        self._mixture = mixture
        self._labels = 0
        self._drifts = 0
        self._adwin = drift.ADWIN(delta=drift_delta)
        self._auc_blend = metrics.RollingROCAUC(window_size=window)
        self._auc_onnx = metrics.RollingROCAUC(window_size=window)
        self._loss_blend = utils.Rolling(metrics.LogLoss, window_size=window)
        self._loss_onnx = utils.Rolling(metrics.LogLoss, window_size=window)
        self._recent: deque[bool] = deque(maxlen=window)  # the labels the rolling AUCs hold
        self._add_btyd()

    def _add_btyd(self) -> None:
        # From the identity: the expert is a probability model fitted to this shop, trusted as
        # it is until labels say otherwise.
        self._btyd = WindowedPlatt(start=(1.0, 0.0))

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A checkpoint from before the BTYD expert gets it fresh (its advantage 0: level
        with the calibrated ONNX expert) and its stacker's advantage moves into the mixture;
        one from before ``WindowedPlatt`` starts its calibration of ONNX from the River
        regression's weights."""
        state = dict(state)
        if "_mixture" not in state:
            advantage = state.pop("_advantage", 0.0)
            state.pop("_gamma", None)
            mixture = ExpertMixture(
                half_life=state.get("half_life", 2000.0),
                eta=state.get("eta", 1.0),
                drift_weight=state.get("drift_weight", 0.75),
            )
            mixture.advantage = float(advantage)
            state["_mixture"] = mixture
        self.__dict__.update(state)
        if "_btyd" not in state:
            self._add_btyd()
        platt = state.get("_platt")
        if isinstance(platt, linear_model.LogisticRegression):
            start = (float(platt.weights.get(ONNX_LOGIT, 0.0)), float(platt.intercept))
            self._platt = WindowedPlatt(start=start if all(map(math.isfinite, start)) else (1, 0))

    # -- reading -----------------------------------------------------------------------------

    @property
    def weight_online(self) -> float:
        """The online learner's share ``w`` of the blend for a user who never ordered (0 until
        ``min_labels`` labels)."""
        return self.shares(False)[1]

    def shares(self, btyd: bool) -> tuple[float, float, float]:
        """The shares of the calibrated ONNX, online and BTYD experts in the blend for a user
        the BTYD expert has a view of (``btyd``) or not; all 0 until ``min_labels`` labels,
        when the raw ONNX probability is published."""
        if self._labels < self.min_labels:
            return 0.0, 0.0, 0.0
        return self._mixture.shares(btyd)

    @property
    def reads_features(self) -> bool:
        """Whether ``predict`` reads its ``x`` at present: only once the online expert has
        weight (before, or while the calibrated ONNX expert wins outright, ``x`` is unused
        and callers may skip building it)."""
        return self._labels >= self.min_labels and (
            self.shares(False)[1] > 0.0 or self.shares(True)[1] > 0.0
        )

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
        return self._platt.predict(_logit(p_onnx))

    def _p_btyd(self, p_btyd: float) -> float:
        return self._btyd.predict(_logit(p_btyd))

    def experts(
        self, x: Mapping[str, float], p_onnx: float, p_btyd: float | None = None
    ) -> tuple[float, float, float | None]:
        """Each expert's probability now: the calibrated ONNX model, the online stacker, and
        the calibrated BTYD expert (None for a user it has no view of). Arguments as in
        ``predict``."""
        return (
            self._p_calibrated(p_onnx),
            self._p_online(self._features(x, p_onnx)),
            None if p_btyd is None else self._p_btyd(p_btyd),
        )

    def combine(self, p_onnx: float, calibrated: float, online: float, btyd: float | None) -> float:
        """The published probability from the experts' (``experts``): their mixture, or the
        raw ONNX probability until ``min_labels`` labels."""
        if self._labels < self.min_labels:
            return float(p_onnx)
        w_cal, w_online, w_btyd = self.shares(btyd is not None)
        p = w_cal * calibrated
        if w_online:
            p += w_online * online
        if btyd is not None:
            p += w_btyd * btyd
        return p

    def predict(self, x: Mapping[str, float], p_onnx: float, p_btyd: float | None = None) -> float:
        """The blended churn probability. ``x`` holds shop-agnostic features (and the BTYD
        expert's view, ``churn_input.btyd_inputs``); ``onnx_logit`` is derived from ``p_onnx``
        here (a value for it in ``x`` is replaced). ``p_btyd`` is the BTYD expert's
        probability, None for a user it has no view of."""
        if self._labels < self.min_labels:
            return float(p_onnx)
        # The stacker's prediction is the costly one: made only when it has a share.
        _w_cal, w_online, _w_btyd = self.shares(p_btyd is not None)
        online = self._p_online(self._features(x, p_onnx)) if w_online else 0.0
        btyd = None if p_btyd is None else self._p_btyd(p_btyd)
        return self.combine(p_onnx, self._p_calibrated(p_onnx), online, btyd)

    def predict_many(
        self, xs: Sequence[Mapping[str, float]], p_onnx: Sequence[float]
    ) -> list[float]:
        """``predict`` over a micro-batch (same results as one call per user)."""
        if len(xs) != len(p_onnx):
            raise ValueError(f"{len(xs)} feature dicts but {len(p_onnx)} ONNX probabilities")
        return [self.predict(x, p) for x, p in zip(xs, p_onnx, strict=True)]

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

    def learn(
        self,
        x: Mapping[str, float],
        p_onnx: float,
        y: bool,
        p_btyd: float | None = None,
        said: Sequence[float] | None = None,
    ) -> bool:
        """Learn one delayed label (``y=True``: the user churned) for a past prediction made
        from ``x``, ``p_onnx`` and ``p_btyd`` (as in ``predict``). ``said`` is what was
        published then and what the online stacker said: ``(published, stacker)``. The
        metrics judge the one, the mixture the other, not what the stacker would say now:
        labels arrive in bursts of one outcome (the idle users' whose horizon ended), and a
        stacker that has just learned the burst's first labels would look better on its next
        ones than it was when it spoke. The calibrations, fitted to a window of thousands of
        labels, barely move within a horizon: their present figures stand in for theirs then
        (and keep the changelog small). Without ``said`` (a prediction kept before it was)
        the present figures stand in for all. Returns True when a drift (degradation) was
        detected."""
        y = bool(y)
        p_onnx = float(p_onnx)
        features = self._features(x, p_onnx)
        p_calibrated = self._p_calibrated(p_onnx)
        p_expert = None if p_btyd is None else self._p_btyd(p_btyd)
        if said is None:
            p_online = self._p_online(features)
            p_blend = self.combine(p_onnx, p_calibrated, p_online, p_expert)
        else:
            p_blend, p_online = float(said[0]), float(said[1])

        self._auc_blend.update(y, p_blend)
        self._auc_onnx.update(y, p_onnx)
        recent = self.__dict__.get("_recent")
        if recent is None:
            recent = self._recent = deque(maxlen=self.window)
        recent.append(y)
        self._loss_blend.update(y, p_blend)
        self._loss_onnx.update(y, p_onnx)

        self._mixture.update(y, calibrated=p_calibrated, online=p_online, btyd=p_expert)
        if p_btyd is not None:
            self._btyd.learn(_logit(p_btyd), y)
        self._model.learn_one(features, y)
        self._platt.learn(features[ONNX_LOGIT], y)
        self._labels += 1

        before = self._adwin.estimation
        self._adwin.update(log_loss(y, p_onnx))
        if self._adwin.drift_detected and self._adwin.estimation > before:
            self._drifts += 1
            self._mixture.favour_online()
            return True
        return False
