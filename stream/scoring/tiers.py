"""Spend tiers relative to the shop itself: where a user's expected spend falls among all users'.

A fixed currency scale would call every customer of a cheap shop "low" and every customer of a
luxury shop "top". Instead the tier boundaries are running quantiles (River's P² estimator,
``stats.Quantile``) of the expected spends the shop's users have been scored with:

* ``low``:  value <= q50
* ``mid``:  q50 < value <= q80
* ``high``: q80 < value <= q95
* ``top``:  value > q95

Ties go to the lower tier, so in a shop where most users are expected to spend nothing, those
users are all ``low`` rather than spread over tiers by a quantile that equals 0.

Early on the quantiles rest on few observations and move a lot; they are used anyway (there is
nothing better for a new shop), and ``n`` tells how many values they rest on — before about
``WARM_UP`` (50) values a tier is a rough guess. With no observation at all, every value is
``low``. The estimates of the three quantiles are independent, so they are made monotone
(each at least the one below) before use.
"""

from __future__ import annotations

from river import base, stats

__all__ = ["QUANTILES", "TIERS", "WARM_UP", "SpendTiers"]

TIERS: tuple[str, ...] = ("low", "mid", "high", "top")
QUANTILES: tuple[float, ...] = (0.5, 0.8, 0.95)
#: Observations after which the tier boundaries are considered settled (informational).
WARM_UP = 50


class SpendTiers(base.Base):
    """Online tiers of expected spend from running quantiles.

    Examples
    --------
    >>> tiers = SpendTiers()
    >>> tiers.tier(10.0)
    'low'
    >>> for v in range(1, 101):
    ...     tiers.update(float(v))
    >>> [tiers.tier(v) for v in (20.0, 60.0, 90.0, 99.0)], tiers.n
    (['low', 'mid', 'high', 'top'], 100)
    """

    def __init__(self) -> None:
        self._quantiles = [stats.Quantile(q) for q in QUANTILES]
        self._n = 0

    @property
    def n(self) -> int:
        """Values observed."""
        return self._n

    @property
    def thresholds(self) -> tuple[float, ...] | None:
        """The monotone (q50, q80, q95) boundaries, or None before any observation."""
        if self._n == 0:
            return None
        out: list[float] = []
        for q in self._quantiles:
            value = q.get()
            if value is None:
                value = out[-1] if out else 0.0
            out.append(float(value) if not out else max(float(value), out[-1]))
        return tuple(out)

    def update(self, value: float) -> None:
        """Observe one user's expected spend."""
        for q in self._quantiles:
            q.update(float(value))
        self._n += 1

    def tier(self, value: float) -> str:
        bounds = self.thresholds
        if bounds is None:
            return TIERS[0]
        for name, bound in zip(TIERS, bounds, strict=False):  # "top" has no bound
            if value <= bound:
                return name
        return TIERS[-1]
