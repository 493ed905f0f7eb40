"""The buy-till-you-die expert of one partition: MBG/NBD and Gamma-Gamma (``stream.scoring.btyd``)
fitted in the stream to a sample of the partition's customers, and refitted as orders come.

Why a sample: the models' parameters describe the shop's population, not a customer, and a few
thousand customers pin them down (the CDNOW fits in the literature use 2,357). So each
partition keeps the order summaries (first order, last order, number of orders, spend) of the
customers whose id hashes below a threshold, halving the threshold whenever the sample outgrows
``sample_size`` (adaptive threshold sampling): every customer has the same chance to be in it,
whatever the order of events, so a replay keeps the same customers and a rebalance moves a
partition's sample with its users. It costs ~40 bytes a sampled customer in the checkpoint.

Why refits every ``refit_every`` orders, warm-started: a fit is tens of milliseconds (scipy's
L-BFGS over the sample), amortised over hundreds of orders; between fits the parameters hold.
Before the first fit the priors' parameters are used (``BgNbd.PRIOR``, and a Gamma-Gamma prior
centred on the shop's mean order value once there is one).

A customer's own summary at scoring time comes from their feature vector (``summaries``):
repeat orders ``orders_total - 1``, age ``tenure_days`` and age at the last order ``tenure_days
- hours_since_order / 24``. Tenure counts from the customer's first event of any kind, which is
their first order in an orders-only history; with clicks first, BG/NBD sees a customer born
at their first visit (older, and with one more order than BG/NBD's repeat count assumes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from stream.features.schema import FEATURE_NAMES
from stream.scoring.btyd import BgNbd, GammaGamma, MbgNbd
from stream.scoring.pending import DAY_MS

__all__ = ["BtydExpert", "BtydPrediction"]

_HASH_SPACE = 2**64
#: One sampled customer in the checkpoint: hash, first and last order (ms), orders, spend.
_RECORD = struct.Struct("<QqqId")

_ORDERS = FEATURE_NAMES.index("orders_total")
_SPEND = FEATURE_NAMES.index("spend_total")
_SINCE_ORDER = FEATURE_NAMES.index("hours_since_order")
_HAS_ORDERED = FEATURE_NAMES.index("has_ordered")
_TENURE = FEATURE_NAMES.index("tenure_days")


def _hash(user_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "little")


@dataclasses.dataclass(frozen=True)
class BtydPrediction:
    """The expert's view of a batch of customers (arrays, one entry per row; NaN where a row is
    not a customer yet: no order)."""

    p_alive: np.ndarray
    #: Horizon (days) -> probability of no order within it.
    p_no_order: dict[float, np.ndarray]
    #: Expected orders over the value period.
    expected_orders: np.ndarray
    #: Expected value of one order.
    expected_value: np.ndarray
    #: What the churn blend takes from the expert (``ChurnBlend``,
    #: ``churn_input.btyd_inputs``), one ``(n, 3)`` row per customer: P(no order within the
    #: blend's horizon), P(alive), and expected orders within it; None unless asked for.
    blend: np.ndarray | None = None

    @property
    def clv(self) -> np.ndarray:
        """Expected spend over the value period: expected orders times expected order value
        (undiscounted)."""
        return self.expected_orders * self.expected_value


class BtydExpert:
    """MBG/NBD and Gamma-Gamma of one partition's customers, fitted in the stream.

    Examples
    --------
    >>> expert = BtydExpert(sample_size=1000, refit_every=50)
    >>> day = DAY_MS
    >>> for u in range(300):  # customers who order every 20 days, some stopping early
    ...     for k in range(1 + u % 5):
    ...         expert.observe(f"u{u}", (u % 30 + 20 * k) * day, 40.0)
    >>> expert.refit(now_ms=200 * day)
    True
    >>> expert.fits, len(expert)
    (1, 300)
    >>> 0.02 < expert.bgnbd.r / expert.bgnbd.alpha < 0.1  # orders a day while alive
    True
    """

    def __init__(self, *, sample_size: int = 2000, refit_every: int = 2000) -> None:
        if sample_size < 2 or refit_every < 1:
            raise ValueError("sample_size must be >= 2 and refit_every >= 1")
        self.sample_size = sample_size
        self.refit_every = refit_every
        #: Customers whose id hashes below this are sampled.
        self.threshold = _HASH_SPACE
        #: hash -> [first order ms, last order ms, orders, spend].
        self._sample: dict[int, list[Any]] = {}
        self._bgnbd = MbgNbd.PRIOR.mode
        self._gamma_gamma: tuple[float, ...] | None = None
        self._orders_since_fit = 0
        self.fits = 0

    def __len__(self) -> int:
        return len(self._sample)

    @property
    def bgnbd(self) -> MbgNbd:
        """The purchase and dropout model (MBG/NBD, ``stream.scoring.btyd.MbgNbd``)."""
        return MbgNbd(*self._bgnbd)

    @property
    def gamma_gamma(self) -> GammaGamma | None:
        """None until the sample holds an order with a positive value."""
        return GammaGamma(*self._gamma_gamma) if self._gamma_gamma is not None else None

    # -- learning ---------------------------------------------------------------------------

    def observe(self, user_id: str, ts: int, total: float) -> None:
        """An order of ``user_id`` at ``ts`` worth ``total`` (each order once, in event-time
        order per customer, as the feature core applies them)."""
        self._orders_since_fit += 1
        h = _hash(user_id)
        if h >= self.threshold:
            return
        entry = self._sample.get(h)
        if entry is None:
            self._sample[h] = [ts, ts, 1, max(float(total), 0.0)]
            if len(self._sample) > self.sample_size:
                self._shrink()
            return
        entry[0] = min(entry[0], ts)
        entry[1] = max(entry[1], ts)
        entry[2] += 1
        entry[3] += max(float(total), 0.0)

    def _shrink(self) -> None:
        while len(self._sample) > self.sample_size:
            self.threshold //= 2
            self._sample = {h: e for h, e in self._sample.items() if h < self.threshold}

    def due(self) -> bool:
        """Whether enough orders came since the last fit for ``refit`` to fit again."""
        return self._orders_since_fit >= self.refit_every and bool(self._sample)

    def refit(self, now_ms: int) -> bool:
        """Fit both models to the sample as it stands at event time ``now_ms`` (the
        partition's stream time), warm-started from the last fit. Returns whether it fitted
        (not when the sample is empty, nor when the optimiser found no usable parameters:
        the last ones then hold)."""
        if not self._sample:
            return False
        first, last, orders, spend = (
            np.array(c, dtype=np.float64) for c in zip(*self._sample.values(), strict=True)
        )
        T = np.maximum(now_ms - first, 0.0) / DAY_MS
        t_x = np.minimum((last - first) / DAY_MS, T)
        self._orders_since_fit = 0
        try:
            bgnbd = astuple_of(MbgNbd.fit(orders - 1.0, t_x, T, start=self.bgnbd))
            mean_value = spend / orders
            priced = mean_value > 0
            gamma_gamma = self._gamma_gamma
            if priced.any():
                prior = GammaGamma.prior_for(float(mean_value[priced].mean()))
                fitted = GammaGamma.fit(orders, mean_value, prior=prior, start=self.gamma_gamma)
                gamma_gamma = astuple_of(fitted)
        except Exception:
            # Whatever the optimiser or the data did, a failed fit must not fail the batch
            # that triggered it (it runs outside any one user's step): the last parameters
            # hold until the next fit, ``refit_every`` orders later.
            return False
        self._bgnbd, self._gamma_gamma = bgnbd, gamma_gamma
        self.fits += 1
        return True

    # -- predicting -------------------------------------------------------------------------

    @staticmethod
    def summaries(vectors: Sequence[Sequence[float]]) -> dict[str, np.ndarray]:
        """Customers' BTYD summaries from their feature vectors (rows): ``x`` (repeat orders),
        ``t_x`` and ``T`` (days), ``orders``, ``mean_value``, and ``customer`` (has ordered)."""
        rows = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), len(FEATURE_NAMES))
        orders = rows[:, _ORDERS]
        customer = (rows[:, _HAS_ORDERED] > 0) & (orders >= 1)
        T = np.maximum(rows[:, _TENURE], 0.0)
        since = np.where(customer, rows[:, _SINCE_ORDER] / 24.0, 0.0)
        t_x = np.clip(T - since, 0.0, T)
        safe_orders = np.maximum(orders, 1.0)
        return {
            "x": np.where(customer, safe_orders - 1.0, 0.0),
            "t_x": t_x,
            "T": T,
            "orders": safe_orders,
            "mean_value": np.maximum(rows[:, _SPEND], 0.0) / safe_orders,
            "customer": customer,
        }

    def predict(
        self,
        vectors: Sequence[Sequence[float]],
        horizons_days: Sequence[float],
        period_days: float,
        *,
        value: bool = True,
        blend_horizon_days: float | None = None,
    ) -> BtydPrediction:
        """The expert's predictions for customers with these feature vectors: P(alive), P(no
        order within each horizon), (with ``value``; else NaN) expected orders and spend over
        ``period_days``, and (with ``blend_horizon_days``) the churn blend's view at that
        horizon (``BtydPrediction.blend``)."""
        s = self.summaries(vectors)
        model = self.bgnbd
        nan = np.where(s["customer"], 0.0, np.nan)
        x, t_x, T = s["x"], s["t_x"], s["T"]
        p_alive = model.p_alive(x, t_x, T) + nan
        p_no_order = {h: model.p_no_order(x, t_x, T, h) + nan for h in horizons_days}
        blend = None
        if blend_horizon_days is not None:
            h = blend_horizon_days
            churn = p_no_order[h] if h in p_no_order else model.p_no_order(x, t_x, T, h) + nan
            orders = model.expected_orders(x, t_x, T, h) + nan
            blend = np.column_stack([churn, p_alive, orders])
        if not value:
            missing = np.full(len(x), np.nan)
            return BtydPrediction(p_alive, p_no_order, missing, missing, blend)
        expected_orders = model.expected_orders(x, t_x, T, period_days) + nan
        values = self.gamma_gamma
        if values is None:
            expected_value = s["mean_value"] + nan
        else:
            expected_value = values.expected_value(s["orders"], s["mean_value"]) + nan
        return BtydPrediction(p_alive, p_no_order, expected_orders, expected_value, blend)

    # -- checkpoint -------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Plain data only: the sample as one packed ``bytes`` (``_RECORD`` per customer)."""
        state = dict(self.__dict__)
        state["_sample"] = b"".join(
            _RECORD.pack(h, e[0], e[1], e[2], e[3]) for h, e in self._sample.items()
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        packed = state.get("_sample", b"")
        if not isinstance(packed, bytes) or len(packed) % _RECORD.size:
            raise ValueError("a BTYD sample is packed records")
        state = dict(state)
        state["_sample"] = {
            h: [first, last, orders, spend]
            for h, first, last, orders, spend in _RECORD.iter_unpack(packed)
        }
        self.__dict__.update(state)


def astuple_of(model: BgNbd | GammaGamma) -> tuple[float, ...]:
    """A fitted model's parameters as plain floats (what the checkpoint keeps)."""
    values = tuple(float(v) for v in dataclasses.astuple(model))
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"unusable parameters {values}")
    return values
