"""Splitting examples by time: train on the earlier period, validate on the later one.

An example has a prediction time ``t`` (its features are the state at ``t``) and a label end
(the last moment its label looks at). Training examples must have *seen their whole label*
before the split (``label_end <= split_ts``), validation examples start at or after it
(``t >= split_ts``) and their labels must lie inside the log. So no training label overlaps
the validation period, and nothing is split randomly across time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream.errors import TrainingError

__all__ = ["TimeSplit", "choose_split"]

DAY_MS = 86_400_000


@dataclass(frozen=True)
class TimeSplit:
    """``first_ts``/``last_ts``: the log's span; ``split_ts``: where validation starts."""

    first_ts: int
    last_ts: int
    split_ts: int

    def train(self, t: np.ndarray, label_end: np.ndarray) -> np.ndarray:
        """Mask of training examples: their label ends by the split.

        >>> s = TimeSplit(0, 100, 50)
        >>> s.train(np.array([10, 40, 60]), np.array([40, 55, 70])).tolist()
        [True, False, False]
        """
        return np.asarray(label_end) <= self.split_ts

    def validation(self, t: np.ndarray, label_end: np.ndarray) -> np.ndarray:
        """Mask of validation examples: predicted at or after the split, label inside the log.

        >>> s = TimeSplit(0, 100, 50)
        >>> s.validation(np.array([10, 50, 90]), np.array([40, 80, 120])).tolist()
        [False, True, False]
        """
        return (np.asarray(t) >= self.split_ts) & (np.asarray(label_end) <= self.last_ts)


def choose_split(
    first_ts: int, last_ts: int, *, horizon_ms: int, warmup_ms: int, validation_fraction: float
) -> TimeSplit:
    """Put the split so the last ``validation_fraction`` of the labelable prediction times
    (``first_ts + warmup`` .. ``last_ts - horizon``) validate and the rest can still train with
    labels that end before the split.

    >>> s = choose_split(0, 100 * DAY_MS, horizon_ms=30 * DAY_MS, warmup_ms=7 * DAY_MS,
    ...                  validation_fraction=0.3)
    >>> round(s.split_ts / DAY_MS, 1)
    51.1
    """
    start = first_ts + warmup_ms
    end = last_ts - horizon_ms
    split = int(end - validation_fraction * (end - start))
    if end <= start or split - horizon_ms < start:
        days = (last_ts - first_ts) / DAY_MS
        raise TrainingError(
            f"the log spans {days:.1f} days: too short for a {horizon_ms / DAY_MS:g}-day label "
            f"horizon with {warmup_ms / DAY_MS:g} days of warm-up, a training period whose "
            f"labels end before validation starts, and a validation period; use a longer log "
            f"or a shorter horizon"
        )
    return TimeSplit(first_ts, last_ts, split)
