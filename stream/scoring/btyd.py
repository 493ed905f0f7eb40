"""Buy-till-you-die (BTYD) models of a shop's customers, fitted from what the feature core keeps.

Retail analysts trust two classic models for an orders-only view of their customers:

- **BG/NBD** (Fader, Hardie and Lee 2005, "Counting your customers the easy way"): while alive
  a customer orders at a rate ``lambda ~ Gamma(r, alpha)`` (per day here), and after each order
  drops out for good with probability ``p ~ Beta(a, b)``. From a customer's repeat orders ``x``,
  the age at their last order ``t_x`` and their age ``T`` (days since their first order) it
  gives the probability they are still alive, the probability they place no order within a
  horizon (our churn), and their expected number of orders over a period.
- **Gamma-Gamma** (Fader and Hardie 2013, note 025): a customer's order values vary around
  their own mean, and those means vary across customers; from a customer's number of orders and
  mean order value it gives the expected value of their next orders (shrunk towards the shop's
  mean the fewer orders they have).

The streaming expert uses MBG/NBD (``MbgNbd``), BG/NBD's variant where a customer may also
drop out right after their first order: BG/NBD takes every customer without a repeat order as
alive, and they are most of an orders-only retailer's customers. We chose the BG/NBD family
over Pareto/NBD: the same sufficient statistics and practically the same fits on retail data,
but a closed-form likelihood and ``P(alive)`` (no Gaussian hypergeometric functions of two
variables to evaluate per customer), which matters when a partition refits in the stream.

Fits are maximum a posteriori: each log-parameter has a Gaussian prior around a default
(``BgNbd.PRIOR``, ``GammaGamma.prior_for``), so a shop with no customers yet gets the prior's
parameters, and a few thousand customers outweigh it. ``prior=None`` gives the maximum
likelihood estimate, which the tests compare with the reference implementation
(``lifetimes``) on its CDNOW data and on generated shops.

Pure numpy and scipy (``scipy.special`` and ``scipy.optimize``): no stream, no state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import astuple, dataclass

import numpy as np
from scipy import optimize, special

__all__ = ["BgNbd", "GammaGamma", "MbgNbd", "Prior"]

ArrayLike = np.ndarray | float | list[float]


@dataclass(frozen=True)
class Prior:
    """A Gaussian prior on each log-parameter: centred on ``mode`` (the parameters, in order),
    ``scale`` in log units (1.0: a factor e either way is one standard deviation)."""

    mode: tuple[float, ...]
    scale: float = 1.0

    def penalty(self, log_params: np.ndarray) -> float:
        z = (log_params - np.log(self.mode)) / self.scale
        return 0.5 * float(z @ z)


def _fit(
    negative_ll: Callable[[np.ndarray], float], start: tuple[float, ...], prior: Prior | None
) -> np.ndarray:
    """Minimise the negative log posterior over log-parameters from ``start``."""

    def objective(log_params: np.ndarray) -> float:
        value = negative_ll(log_params)
        if prior is not None:
            value += prior.penalty(log_params)
        return value if math.isfinite(value) else 1e300

    x0 = np.log(np.asarray(start, dtype=np.float64))
    bounds = [(-12.0, 12.0)] * len(start)  # parameters within e^-12 .. e^12
    result = optimize.minimize(objective, x0, method="L-BFGS-B", bounds=bounds)
    return np.exp(result.x)


def _arrays(*values: ArrayLike) -> list[np.ndarray]:
    return [np.asarray(v, dtype=np.float64) for v in values]


def _log_hyp2f1(a: np.ndarray, b: np.ndarray, c: np.ndarray, z: np.ndarray) -> np.ndarray:
    """log 2F1(a, b; c; z) for 0 <= z < 1, by Euler's transformation where the series
    overflows."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        direct = np.log(special.hyp2f1(a, b, c, z))
        euler = np.log(special.hyp2f1(c - a, c - b, c, z)) + (c - a - b) * np.log1p(-z)
    return np.where(np.isfinite(direct), direct, euler)


@dataclass(frozen=True)
class BgNbd:
    """BG/NBD parameters, time in days: purchase rate ``Gamma(r, alpha)`` (mean ``r / alpha``
    orders a day), dropout after an order ``Beta(a, b)`` (mean ``a / (a + b)``).

    ``x`` is a customer's number of repeat orders (orders - 1), ``t_x`` their age at the last
    order and ``T`` their age now, both in days since the first order; all methods take arrays
    (one entry per customer) or numbers.

    >>> model = BgNbd(r=0.8, alpha=40.0, a=0.8, b=4.0)
    >>> alive = model.p_alive(x=[0, 3, 3], t_x=[0, 60, 60], T=[30, 70, 200])
    >>> [round(float(p), 3) for p in alive]
    [1.0, 0.839, 0.212]
    """

    r: float
    alpha: float
    a: float
    b: float

    #: A retailer's customers before any data: one order in ~60 days while alive, and about
    #: one in five dropping out after an order.
    PRIOR = Prior(mode=(0.5, 30.0, 0.8, 3.2))

    @classmethod
    def fit(
        cls,
        x: ArrayLike,
        t_x: ArrayLike,
        T: ArrayLike,
        *,
        weights: ArrayLike | None = None,
        prior: Prior | None = PRIOR,
        start: BgNbd | None = None,
    ) -> BgNbd:
        """The parameters that best explain these customers (``weights``: how many customers
        each row stands for). With ``prior`` (the default) the posterior mode, so no
        customers give the prior's mode; ``prior=None`` the maximum likelihood estimate.
        ``start`` warm-starts the search (a refit from the last fit)."""
        x, t_x, T = _arrays(x, t_x, T)
        w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
        if x.size and (np.any(x < 0) or np.any(t_x < 0) or np.any(t_x > T)):
            raise ValueError("need x >= 0 and 0 <= t_x <= T")
        if not x.size:
            if prior is None:
                raise ValueError("no customers to fit and no prior")
            return cls(*prior.mode)

        def negative_ll(log_params: np.ndarray) -> float:
            return -float(w @ cls(*np.exp(log_params)).log_likelihood(x, t_x, T))

        begin = astuple(start) if start is not None else (prior or cls.PRIOR).mode
        return cls(*_fit(negative_ll, begin, prior).tolist())

    def _common_log_likelihood(self, x: np.ndarray, dropouts_before: float) -> np.ndarray:
        """The terms of the log-likelihood both variants share: the Gamma mixture of purchase
        rates, and the Beta mixture of surviving ``x + dropouts_before`` dropout chances."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        survived = x + dropouts_before
        return (
            special.gammaln(r + x)
            - special.gammaln(r)
            + r * math.log(alpha)
            + special.gammaln(a + b)
            + special.gammaln(b + survived)
            - special.gammaln(b)
            - special.gammaln(a + b + survived)
        )

    def log_likelihood(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> np.ndarray:
        """Each customer's log-likelihood (Fader, Hardie and Lee 2005, eq. 6)."""
        x, t_x, T = _arrays(x, t_x, T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        head = self._common_log_likelihood(x, dropouts_before=0.0)
        stays = -(r + x) * np.log(alpha + T)
        repeat = x > 0
        # Dropped out after the last order: only possible after a repeat order.
        left = np.where(
            repeat,
            math.log(a) - np.log(b + np.maximum(x, 1.0) - 1.0) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
        return head + np.logaddexp(stays, left)

    def p_alive(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> np.ndarray:
        """The probability that each customer is still alive at age ``T``."""
        x, t_x, T = _arrays(x, t_x, T)
        log_odds_dead = (
            math.log(self.a)
            - np.log(self.b + np.maximum(x, 1.0) - 1.0)
            + (self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + t_x))
        )
        return np.where(x > 0, special.expit(-log_odds_dead), 1.0)

    def p_no_order(
        self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, horizon: ArrayLike
    ) -> np.ndarray:
        """The probability that each customer places no order in the next ``horizon`` days:
        dead, or alive and no order. An alive customer orders as a Poisson process whose rate
        has the posterior ``Gamma(r + x, alpha + T)`` (dropout only ever follows an order, so
        with no order they stay alive), whence ``((alpha + T) / (alpha + T + horizon))^(r+x)``.
        """
        x, t_x, T, horizon = _arrays(x, t_x, T, horizon)
        alive = self.p_alive(x, t_x, T)
        quiet = np.exp((self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + T + horizon)))
        return 1.0 - alive + alive * quiet

    def expected_orders(
        self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, period: ArrayLike
    ) -> np.ndarray:
        """Each customer's expected number of orders in the next ``period`` days (Fader,
        Hardie and Lee 2005, eq. 10)."""
        x, t_x, T, period = _arrays(x, t_x, T, period)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        ra, rb, rc = r + x, b + x, a + b + x - 1.0
        z = period / (alpha + T + period)
        log_hyp = _log_hyp2f1(ra, rb, rc, z)
        first = rc / (a - 1.0)
        second = 1.0 - np.exp(log_hyp + ra * (np.log(alpha + T) - np.log(alpha + T + period)))
        odds_dead = np.where(
            x > 0,
            a / (b + np.maximum(x, 1.0) - 1.0) * ((alpha + T) / (alpha + t_x)) ** ra,
            0.0,
        )
        return first * second / (1.0 + odds_dead)


@dataclass(frozen=True)
class MbgNbd(BgNbd):
    """MBG/NBD (Batislam, Denizel and Filiztekin 2007): BG/NBD where a customer may also drop
    out right after their first order. BG/NBD takes every customer without a repeat order as
    alive however long ago they bought (``p_alive`` is 1), and in an orders-only retailer
    they are most customers: on a generated shop whose customers drop out after any order,
    BG/NBD's ``p_alive`` ranked the next month's churners backwards (``tests/stream/scoring/
    test_online_btyd.py``). Same parameters, same summaries.

    >>> model = MbgNbd(r=0.8, alpha=40.0, a=0.8, b=4.0)
    >>> [round(float(p), 3) for p in model.p_alive(x=[0, 0, 3], t_x=[0, 0, 60], T=[30, 200, 200])]
    [0.762, 0.544, 0.239]
    """

    def log_likelihood(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> np.ndarray:
        """Each customer's log-likelihood (Batislam et al. 2007, eq. 2)."""
        x, t_x, T = _arrays(x, t_x, T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        head = self._common_log_likelihood(x, dropouts_before=1.0) - (r + x) * np.log(alpha + T)
        left = math.log(a) - np.log(b + x) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
        return head + np.logaddexp(left, 0.0)

    def p_alive(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> np.ndarray:
        x, t_x, T = _arrays(x, t_x, T)
        log_odds_dead = (
            math.log(self.a)
            - np.log(self.b + x)
            + (self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + t_x))
        )
        return special.expit(-log_odds_dead)

    def expected_orders(
        self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, period: ArrayLike
    ) -> np.ndarray:
        x, t_x, T, period = _arrays(x, t_x, T, period)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        ra = r + x
        z = period / (alpha + T + period)
        log_hyp = _log_hyp2f1(ra, b + x + 1.0, a + b + x, z)
        first = (a + b + x) / (a - 1.0)
        second = 1.0 - np.exp(log_hyp + ra * (np.log(alpha + T) - np.log(alpha + T + period)))
        return first * second * self.p_alive(x, t_x, T)


@dataclass(frozen=True)
class GammaGamma:
    """Gamma-Gamma parameters of order values: a customer's orders are worth
    ``Gamma(p, nu)`` with their own ``nu ~ Gamma(q, v)``, so their mean order value is
    ``p / nu`` and the shop's ``p * v / (q - 1)``.

    >>> model = GammaGamma(p=6.0, q=4.0, v=15.0)
    >>> model.population_mean
    30.0
    >>> [round(float(m), 2) for m in model.expected_value([0, 1, 10], [0.0, 50.0, 50.0])]
    [30.0, 43.33, 49.05]
    """

    p: float
    q: float
    v: float

    @property
    def population_mean(self) -> float:
        return self.p * self.v / (self.q - 1.0) if self.q > 1.0 else math.inf

    @staticmethod
    def prior_for(mean_value: float) -> Prior:
        """A prior whose shop-wide mean order value is ``mean_value`` (order values are in the
        shop's currency, so the prior's scale has to come from the shop's own orders)."""
        p, q = 6.0, 4.0
        return Prior(mode=(p, q, max(mean_value, 1e-6) * (q - 1.0) / p))

    @classmethod
    def fit(
        cls,
        frequency: ArrayLike,
        mean_value: ArrayLike,
        *,
        weights: ArrayLike | None = None,
        prior: Prior | None = None,
        start: GammaGamma | None = None,
    ) -> GammaGamma:
        """The parameters that best explain customers with ``frequency`` orders of mean value
        ``mean_value`` (only customers with at least one order and a positive mean count).
        With ``prior`` the posterior mode; without one the maximum likelihood estimate."""
        f, m = _arrays(frequency, mean_value)
        w = np.ones_like(f) if weights is None else np.asarray(weights, dtype=np.float64)
        keep = (f > 0) & (m > 0)
        f, m, w = f[keep], m[keep], w[keep]
        if not f.size:
            if prior is None:
                raise ValueError("no customers to fit and no prior")
            return cls(*prior.mode)

        def negative_ll(log_params: np.ndarray) -> float:
            return -float(w @ cls(*np.exp(log_params)).log_likelihood(f, m))

        begin = (
            astuple(start) if start is not None else (prior or cls.prior_for(float(m.mean()))).mode
        )
        return cls(*_fit(negative_ll, begin, prior).tolist())

    def log_likelihood(self, frequency: ArrayLike, mean_value: ArrayLike) -> np.ndarray:
        """Each customer's log-likelihood of their mean order value (note 025, eq. 1a)."""
        x, m = _arrays(frequency, mean_value)
        p, q, v = self.p, self.q, self.v
        return (
            special.gammaln(p * x + q)
            - special.gammaln(p * x)
            - special.gammaln(q)
            + q * math.log(v)
            + (p * x - 1.0) * np.log(m)
            + p * x * np.log(x)
            - (p * x + q) * np.log(x * m + v)
        )

    def expected_value(self, frequency: ArrayLike, mean_value: ArrayLike) -> np.ndarray:
        """Each customer's expected order value: their own mean, weighted by their number of
        orders, against the shop's (note 025, eq. 5). A customer without orders gets the
        shop's mean."""
        x, m = _arrays(frequency, mean_value)
        p, q, v = self.p, self.q, self.v
        return (p * (v + x * m)) / (p * x + q - 1.0)
