"""Small custom Keras layers that put input handling *inside* the exported graph.

Normalisation, missing-value handling and output corrections live in the model, so the ONNX
file is the whole contract: the service feeds raw feature vectors and gets final numbers.
Registered as serializable so ``shopscore export`` can reload a saved ``.keras`` model.
Importing this module imports Keras (the ``train`` extra).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

__all__ = [
    "Column",
    "CopyScores",
    "FeatureNormalizer",
    "LogitShift",
    "MaskedMean",
    "RecencyRankWeights",
    "ScaledSoftplus",
]


@keras.saving.register_keras_serializable("shopscore")
class FeatureNormalizer(keras.layers.Layer):
    """Select ``columns``; NaN → 0 (a missing value is "none", never a NaN that poisons the
    batch); optionally ``log1p`` (counts, money and hours are heavy-tailed and their scale
    differs from shop to shop: logs turn a 10× larger shop into a shift, not a blow-up); then
    standardise with training ``mean``/``std`` and clip to ±6 so an outlier shop cannot
    saturate the network."""

    def __init__(
        self,
        columns: list[int],
        mean: list[float],
        std: list[float],
        log: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.columns = [int(c) for c in columns]
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.log = bool(log)

    def call(self, x: Any) -> Any:
        x = ops.take(x, np.asarray(self.columns, np.int32), axis=1)
        x = ops.where(ops.isnan(x), ops.zeros_like(x), x)
        if self.log:
            x = ops.log(ops.maximum(x, 0.0) + 1.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return ops.clip(x, -6.0, 6.0)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "columns": self.columns,
            "mean": self.mean,
            "std": self.std,
            "log": self.log,
        }

    @staticmethod
    def fit_stats(x: np.ndarray, log: bool = True) -> tuple[list[float], list[float]]:
        """Mean and std of the (log-transformed) training columns; constant columns get 1."""
        x = np.nan_to_num(np.asarray(x, np.float64))
        if log:
            x = np.log1p(np.maximum(x, 0.0))
        std = x.std(axis=0)
        return x.mean(axis=0).tolist(), np.where(std < 1e-6, 1.0, std).tolist()


@keras.saving.register_keras_serializable("shopscore")
class MaskedMean(keras.layers.Layer):
    """Mean of embeddings over the non-padding positions (id 0 = empty slot)."""

    def call(self, embedded: Any, ids: Any) -> Any:
        mask = ops.expand_dims(ops.cast(ops.not_equal(ids, 0), embedded.dtype), -1)
        return ops.sum(embedded * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)


@keras.saving.register_keras_serializable("shopscore")
class CopyScores(keras.layers.Layer):
    """Pointer scores: each sequence position adds its weight to the logit of the category
    it holds (padding adds nothing). With weights computed from the user's context this is a
    small attention over the recent categories; it works for categories never seen in
    training, which is what carries interest over to another shop's catalogue."""

    def __init__(self, buckets: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.buckets = int(buckets)

    def call(self, ids: Any, weights: Any) -> Any:
        onehot = ops.one_hot(ids, self.buckets, dtype=weights.dtype)
        mask = ops.cast(ops.not_equal(ids, 0), weights.dtype)
        return ops.sum(ops.expand_dims(weights * mask, -1) * onehot, axis=1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "buckets": self.buckets}


@keras.saving.register_keras_serializable("shopscore")
class RecencyRankWeights(keras.layers.Layer):
    """Per-position weights from per-*rank* weights: the latest occurrence of each category
    gets the weight of its recency rank among distinct categories (0 = the latest category,
    1 = the one before it...), earlier repeats and padding get 0. With ``CopyScores`` this
    lets the model rank "the last few different categories" the way the last-category
    baseline does, and learn by how much to trust each rank in context."""

    def call(self, ids: Any, rank_weights: Any) -> Any:
        length = ids.shape[1]
        later = np.triu(np.ones((length, length), np.float32), k=1)  # later[j, k] = k > j
        same = ops.cast(ops.equal(ops.expand_dims(ids, 2), ops.expand_dims(ids, 1)), "float32")
        repeated_later = ops.max(same * later, axis=2)
        latest = (1.0 - repeated_later) * ops.cast(ops.not_equal(ids, 0), "float32")
        rank = ops.sum(later * ops.expand_dims(latest, 1), axis=2)  # distinct ones after j
        onehot = ops.one_hot(ops.cast(rank, "int32"), length, dtype="float32")
        return latest * ops.sum(onehot * ops.expand_dims(rank_weights, 1), axis=2)


@keras.saving.register_keras_serializable("shopscore")
class Column(keras.layers.Layer):
    """One column of an integer input, e.g. the item id of a ``[item, category]`` pair."""

    def __init__(self, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = int(index)

    def call(self, x: Any) -> Any:
        return x[:, self.index]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "index": self.index}


@keras.saving.register_keras_serializable("shopscore")
class LogitShift(keras.layers.Layer):
    """Adds a constant to logits: undoes the prior shift of class-weighted training, so the
    served probability is calibrated for the real class balance."""

    def __init__(self, shift: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shift = float(shift)

    def call(self, x: Any) -> Any:
        return x + self.shift

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "shift": self.shift}


@keras.saving.register_keras_serializable("shopscore")
class ScaledSoftplus(keras.layers.Layer):
    """``softplus(x) * scale``: a non-negative amount, trained in units of ``scale``."""

    def __init__(self, scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, x: Any) -> Any:
        return ops.softplus(x) * self.scale

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale}
