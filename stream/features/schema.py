"""The feature vector's names, order and version, declared once and hashed.

A model states the hash of the schema it was trained on; the service refuses a model whose
hash differs from its own (the features it would be fed mean something else). The hash covers
the names, their order, the version and every setting that changes what a feature's value is
(``FeatureConfig.settings()``: session gap, allowed lateness, duplicate detection), so a model
trained under other settings is refused with the message to retrain, never used silently.
``SCHEMA_HASH`` is the hash under the default settings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

__all__ = ["FEATURE_NAMES", "FEATURE_VERSION", "WINDOWS", "schema_hash"]

FEATURE_VERSION = 1

#: Decayed-counter windows: name -> time constant in ms (see ``profile.DecayedCounter``).
WINDOWS: dict[str, int] = {
    "1h": 3_600_000,
    "24h": 86_400_000,
    "7d": 7 * 86_400_000,
    "30d": 30 * 86_400_000,
}

_COUNTED = ("clicks", "cart_adds", "cart_removes", "orders", "spend")

FEATURE_NAMES: tuple[str, ...] = (
    *(f"{what}_{window}" for what in _COUNTED for window in WINDOWS),
    "clicks_total",
    "cart_adds_total",
    "cart_removes_total",
    "orders_total",
    "spend_total",
    "hours_since_click",
    "hours_since_cart",
    "hours_since_order",
    "has_clicked",
    "has_carted",
    "has_ordered",
    "tenure_days",
    "order_frequency_30d",
    "order_value_mean",
    "session_active",
    "session_minutes",
    "session_events",
    "sessions_total",
    "cart_items",
    "cart_value",
    "carts_abandoned",
    "top_category_share",
    "category_entropy",
    "categories_seen",
    "price_imputed_share",
)


def schema_hash(
    settings: Mapping[str, int],
    names: tuple[str, ...] = FEATURE_NAMES,
    version: int = FEATURE_VERSION,
) -> str:
    """A short, stable fingerprint of the feature names, their order, the version and the
    feature settings (``FeatureConfig.settings()``)."""
    knobs = ",".join(f"{k}={int(v)}" for k, v in sorted(settings.items()))
    text = f"v{version}:" + ",".join(names) + ";" + knobs
    return hashlib.sha256(text.encode()).hexdigest()[:16]
