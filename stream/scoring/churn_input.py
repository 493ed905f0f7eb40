"""The online churn learner's input, built from a feature vector and the ONNX model's
probability: at prediction time and again when the label arrives, from the stored vector."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from stream.features.schema import FEATURE_NAMES

__all__ = ["CHURN_INPUT_NAMES", "MOMENT_FEATURES", "churn_input_matrix", "churn_inputs"]

#: Features that describe the moment rather than the customer: at an event the user is always
#: in a session (with a cart being filled), at a clock tick never. A learner that only saw
#: them constant would read an idle user's 0 as dozens of standard deviations away.
MOMENT_FEATURES = frozenset(
    {"session_active", "session_minutes", "session_events", "cart_items", "cart_value"}
    | {name for name in FEATURE_NAMES if name.endswith("_1h")}
)
_CHURN_INPUTS = tuple(
    (index, name) for index, name in enumerate(FEATURE_NAMES) if name not in MOMENT_FEATURES
)


def churn_inputs(vector: Sequence[float], p_onnx: float) -> dict[str, float]:
    """The online churn learner's input: the customer's features on a signed log scale (a
    shop's counts, prices and gaps differ by orders of magnitude from another's; logs make them
    comparable) and the ONNX model's logit, whose weight the learner fits to this shop."""
    x = {
        name: math.copysign(math.log1p(abs(vector[index])), vector[index])
        for index, name in _CHURN_INPUTS
    }
    p = min(max(p_onnx, 1e-6), 1 - 1e-6)
    x["onnx_logit"] = math.log(p / (1 - p))
    return x


_INDEX = np.array([index for index, _name in _CHURN_INPUTS], dtype=np.intp)
#: The columns of ``churn_input_matrix``: ``churn_inputs``'s keys but ``onnx_logit``.
CHURN_INPUT_NAMES = tuple(name for _index, name in _CHURN_INPUTS)


def churn_input_matrix(vectors: Sequence[Sequence[float]]) -> np.ndarray:
    """``churn_inputs`` of a batch's rows as one matrix (columns ``CHURN_INPUT_NAMES``; the
    ONNX logit is left to ``ChurnBlend.predict_matrix``): numpy's logarithms, which may differ
    from ``math``'s in the last bit.

    >>> row = [float(i) for i in range(len(FEATURE_NAMES))]
    >>> x, m = churn_inputs(row, 0.3), churn_input_matrix([row])[0]
    >>> all(abs(x[k] - v) < 1e-12 for k, v in zip(CHURN_INPUT_NAMES, m))
    True
    """
    if not len(vectors):
        return np.zeros((0, len(CHURN_INPUT_NAMES)))
    rows = np.asarray(vectors, dtype=np.float64)[:, _INDEX]
    return np.copysign(np.log1p(np.abs(rows)), rows)
