"""The churn blend's predictions for a whole micro-batch at once (``ChurnBlend``'s
``predict_matrix``, ``experts_matrix`` and ``combine_matrix``): the per-user arithmetic of
``stream.scoring.online_churn`` over numpy arrays, equal to one call per user up to the last
bits of the floating point sums.

Why not River's ``predict_proba_many``: it goes through a data frame per call, which costs
more than a micro-batch of a few users' ``predict_proba_one``; the parameters (the scaler's
running means and variances, the regression's weights and intercept) are the models' public
state and the arithmetic is River's own (``transform_one``, ``_clip_scaled``, the loss's
``mean_func`` over an array).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from river import compose

    from stream.scoring.calibration import WindowedPlatt

__all__ = ["CLIP", "LOGIT_EPS", "ONNX_LOGIT", "BatchPredictions"]

#: The feature key under which the ONNX probability's logit reaches the online learner.
ONNX_LOGIT = "onnx_logit"
LOGIT_EPS = 1e-6  # keeps logit(p_onnx) finite
#: Standardised stacker inputs are clipped to this many standard deviations.
CLIP = 5.0


class BatchPredictions:
    """``ChurnBlend``'s batch predictions: a mixin, whose state (the attributes below, and the
    ``shares`` and ``reads_features`` it reads) is the blend's own."""

    _platt: WindowedPlatt
    _btyd: WindowedPlatt
    _model: compose.Pipeline
    _labels: int
    min_labels: int

    def predict_matrix(
        self,
        X: np.ndarray | None,
        columns: Sequence[str],
        p_onnx: np.ndarray,
        p_btyd: np.ndarray | None = None,
    ) -> np.ndarray:
        """``predict`` for a whole micro-batch at once (``experts_matrix``, then
        ``combine_matrix``). ``X`` is read only when ``reads_features``; callers may pass None
        otherwise."""
        p_onnx = np.asarray(p_onnx, dtype=np.float64)
        if self._labels < self.min_labels:
            return p_onnx.copy()
        if X is None and self.reads_features:
            raise ValueError("the online expert has weight: X is needed (see reads_features)")
        return self.combine_matrix(self.experts_matrix(X, columns, p_onnx, p_btyd), p_onnx)

    def experts_matrix(
        self,
        X: np.ndarray | None,
        columns: Sequence[str],
        p_onnx: np.ndarray,
        p_btyd: np.ndarray | None = None,
    ) -> np.ndarray:
        """``experts`` for a whole micro-batch at once, one row per user (NaN where the BTYD
        expert has no view; the stacker's column is 0 when ``X`` is None): row ``i`` of ``X``
        holds ``x[c] for c in columns`` of the ``i``-th user (``onnx_logit`` is derived from
        ``p_onnx``, as in ``predict``), ``p_btyd[i]`` its BTYD probability (NaN for none).
        Equal to one ``experts`` per row up to the last bits of the floating point sums."""
        p_onnx = np.asarray(p_onnx, dtype=np.float64)
        logit = _logits(p_onnx)
        out = np.zeros((len(p_onnx), 3))
        out[:, 0] = self._platt.predict_many(logit)
        if X is not None:
            out[:, 1] = self._online_matrix(X, columns, logit)
        raw = np.full(len(p_onnx), np.nan) if p_btyd is None else np.asarray(p_btyd, np.float64)
        awake = ~np.isnan(raw)
        out[:, 2] = np.where(
            awake, self._btyd.predict_many(_logits(np.where(awake, raw, 0.5))), np.nan
        )
        return out

    def combine_matrix(self, experts: np.ndarray, p_onnx: np.ndarray) -> np.ndarray:
        """``combine`` for rows of ``experts_matrix``."""
        p_onnx = np.asarray(p_onnx, dtype=np.float64)
        if self._labels < self.min_labels:
            return p_onnx.copy()
        awake = ~np.isnan(experts[:, 2])
        asleep_shares, awake_shares = self.shares(False), self.shares(True)
        w_cal, w_online, w_btyd = (
            np.where(awake, on, off) for off, on in zip(asleep_shares, awake_shares, strict=True)
        )
        btyd = np.where(awake, experts[:, 2], 0.0)
        return w_cal * experts[:, 0] + w_online * experts[:, 1] + w_btyd * btyd

    def _online_matrix(
        self, X: np.ndarray, columns: Sequence[str], logit: np.ndarray
    ) -> np.ndarray:
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
        scaled = np.clip(scaled, -CLIP, CLIP)
        weights = np.array([model.weights.get(c, 0.0) for c in names])
        return model.loss.mean_func(scaled @ weights + model.intercept)


def _logits(p: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.log(clipped / (1.0 - clipped))
