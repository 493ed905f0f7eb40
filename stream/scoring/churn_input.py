"""The online churn learner's input, built from a feature vector, the ONNX model's
probability and the BTYD expert's view: at prediction time and again when the label arrives,
from the stored vector and view."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from stream.features.schema import FEATURE_NAMES

__all__ = [
    "BTYD_INPUT_NAMES",
    "CHURN_INPUT_NAMES",
    "MOMENT_FEATURES",
    "btyd_input_matrix",
    "btyd_inputs",
    "churn_input_matrix",
    "churn_inputs",
    "stored_vector",
]

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


_READ = frozenset(index for index, _name in _CHURN_INPUTS)


def stored_vector(vector: Sequence[float]) -> list[float]:
    """A feature vector as a pending churn prediction keeps it for its label: what
    ``churn_inputs`` reads, to 3 significant digits (an error below 0.0005 on the log scale it
    reads them on), and 0.0 for the moment's features it never reads. A user keeps up to a
    dozen of these rows in the changelog.

    >>> row = [1234.5678] * len(FEATURE_NAMES)
    >>> kept = stored_vector(row)
    >>> kept[FEATURE_NAMES.index("orders_total")], kept[FEATURE_NAMES.index("session_events")]
    (1230.0, 0.0)
    """
    return [float(f"{v:.3g}") if i in _READ else 0.0 for i, v in enumerate(vector)]


#: The stacker's inputs from the BTYD expert's view of a customer (``btyd_inputs``).
BTYD_INPUT_NAMES = ("btyd_churn_logit", "btyd_alive_logit", "btyd_orders_log")
_EPS = 1e-6


def _logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def btyd_inputs(btyd: Sequence[float] | None) -> dict[str, float]:
    """The stacker's inputs from the BTYD expert's ``(P(no order within the horizon),
    P(alive), expected orders within it)`` of a customer: logits and a log, so a unit means
    the same at 0.5 as at 0.99. Zeros for a user the expert has no view of (no order yet); the
    stacker tells them apart by ``has_ordered``."""
    if btyd is None:
        return dict.fromkeys(BTYD_INPUT_NAMES, 0.0)
    churn, alive, orders = btyd
    return {
        "btyd_churn_logit": _logit(churn),
        "btyd_alive_logit": _logit(alive),
        "btyd_orders_log": math.log1p(max(orders, 0.0)),
    }


def churn_inputs(
    vector: Sequence[float], p_onnx: float, btyd: Sequence[float] | None = None
) -> dict[str, float]:
    """The online churn learner's input: the customer's features on a signed log scale (a
    shop's counts, prices and gaps differ by orders of magnitude from another's; logs make them
    comparable), the ONNX model's logit, whose weight the learner fits to this shop, and the
    BTYD expert's view (``btyd_inputs``)."""
    x = {
        name: math.copysign(math.log1p(abs(vector[index])), vector[index])
        for index, name in _CHURN_INPUTS
    }
    x.update(btyd_inputs(btyd))
    x["onnx_logit"] = _logit(p_onnx)
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


def btyd_input_matrix(btyd: np.ndarray) -> np.ndarray:
    """``btyd_inputs`` of a batch's rows as one matrix (columns ``BTYD_INPUT_NAMES``) from an
    ``(n, 3)`` array of the expert's views, NaN in the rows it has none of.

    >>> views = np.array([[0.7, 0.4, 0.5], [np.nan, np.nan, np.nan]])
    >>> m = btyd_input_matrix(views)
    >>> [round(v, 9) for v in m[0]] == [round(v, 9) for v in btyd_inputs(views[0]).values()]
    True
    >>> m[1].tolist()
    [0.0, 0.0, 0.0]
    """
    btyd = np.asarray(btyd, dtype=np.float64).reshape(-1, len(BTYD_INPUT_NAMES))
    seen = ~np.isnan(btyd[:, 0])
    p = np.clip(np.where(seen[:, None], btyd[:, :2], 0.5), _EPS, 1 - _EPS)
    orders = np.log1p(np.maximum(np.where(seen, btyd[:, 2], 0.0), 0.0))
    return np.column_stack([np.log(p / (1 - p)), orders])
