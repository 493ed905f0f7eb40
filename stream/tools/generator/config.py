"""What determines a log: its config, the time units and clock helpers, the user model's constants."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "ACT_MAX",
    "ACT_MEDIAN",
    "ACT_SIGMA",
    "CATEGORIES",
    "CHURN_BASE",
    "CHURN_BASE_AFTER",
    "DAY",
    "DEFAULT_START",
    "DEFAULT_START_MS",
    "DIURNAL_AMP",
    "DRIFT_SIGMA",
    "FADE_MS",
    "HOUR",
    "INTEREST_ALPHA",
    "MIN",
    "MIN_SESSION_GAP",
    "N_CAT",
    "PENDING_MS",
    "PULL_DAYS",
    "P_FROM_START",
    "P_RECOVER",
    "RHO_SPEND",
    "SEC",
    "SWITCH_DAYS",
    "GeneratorConfig",
    "ms_to_iso",
    "truth_path",
]


DEFAULT_START = "2026-01-01T00:00:00Z"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SEC = 1_000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR


def _iso_to_ms(text: str) -> int:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parsed - _EPOCH) // timedelta(milliseconds=1)


def ms_to_iso(ms: int) -> str:
    """Integer arithmetic only, so the string is the same instant to the millisecond."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


DEFAULT_START_MS = _iso_to_ms(DEFAULT_START)

CATEGORIES: tuple[str, ...] = (
    "electronics", "books", "fashion", "home", "beauty", "sports",
    "toys", "grocery", "garden", "automotive", "music", "health",
)  # fmt: skip
N_CAT = len(CATEGORIES)


# User model; the constants are calibrated so 30 days give ~40-100 events per user and
# roughly a third of the users churn within the period.
P_FROM_START = 0.55  # share of users already customers when the period starts
ACT_MEDIAN = 3.0  # sessions per week of the median user
ACT_SIGMA = 0.85
ACT_MAX = 60.0
RHO_SPEND = 0.45  # correlation of the activity and spend traits
INTEREST_ALPHA = 4.0  # Dirichlet concentration: small means a few favourite categories
DRIFT_SIGMA = 0.12  # log-space random walk of interests, per sqrt(day)
SWITCH_DAYS = 60.0  # mean time between switches of the favourite category
PULL_DAYS = 20.0  # after the change, time scale of the pull towards POP_AFTER
DIURNAL_AMP = 0.7  # session rate is 1 + amp * cos(2 pi (hour - 20) / 24): evenings are busy
FADE_MS = 7 * DAY  # activity fades linearly over this time before churn
MIN_SESSION_GAP = 10 * MIN
PENDING_MS = 7 * DAY  # an abandoned cart can be ordered in a later session within this time
P_RECOVER = 0.3
CHURN_BASE = 0.012  # hazard per day of the median user before the change
CHURN_BASE_AFTER = 0.014


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything that determines the log; the same config always gives the same bytes."""

    users: int = 1000
    days: float = 30
    seed: int = 1
    start_ms: int = DEFAULT_START_MS
    change_day: float | None = None
    bad_fraction: float = 0.0
    duplicate_fraction: float = 0.0
    iso_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.users < 0:
            raise ValueError(f"users must be >= 0, got {self.users}")
        if not self.days > 0:
            raise ValueError(f"days must be > 0, got {self.days}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0 <= self.start_ms < 10**14:
            raise ValueError(f"start_ms must be a non-negative epoch-ms value, got {self.start_ms}")
        if self.change_day is not None and not self.change_day >= 0:
            raise ValueError(f"change_day must be >= 0 or None, got {self.change_day}")
        for name in ("bad_fraction", "duplicate_fraction", "iso_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")

    @property
    def end_ms(self) -> int:
        """Exclusive end of the period."""
        return self.start_ms + round(self.days * DAY)

    def as_dict(self) -> dict[str, Any]:
        """Normalised types, so the recorded config does not depend on int-vs-float arguments."""
        return {
            "users": int(self.users),
            "days": float(self.days),
            "seed": int(self.seed),
            "start_ms": int(self.start_ms),
            "end_ms": self.end_ms,
            "change_day": None if self.change_day is None else float(self.change_day),
            "bad_fraction": float(self.bad_fraction),
            "duplicate_fraction": float(self.duplicate_fraction),
            "iso_fraction": float(self.iso_fraction),
        }


def truth_path(log_path: str | Path) -> Path:
    """FILE.jsonl -> FILE.truth.json beside it (any other suffix is replaced the same way)."""
    path = Path(log_path)
    return path.with_name(path.stem + ".truth.json") if path.suffix else Path(f"{path}.truth.json")
