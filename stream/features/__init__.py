"""The pure feature core: per-user state, how one event changes it, and what is read from it.

No Faust import anywhere below this package: the worker's agents and ``offline_train`` call the
same functions, so training/serving skew cannot happen (design principle 1).
"""

from stream.features.codec import decode_state, encode_state
from stream.features.profile import Profile, ProfileConfig
from stream.features.schema import FEATURE_NAMES, FEATURE_VERSION
from stream.features.state import (
    SCHEMA_HASH,
    FeatureConfig,
    Outcome,
    UserState,
    apply_event,
    describe,
    feature_vector,
)

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "SCHEMA_HASH",
    "FeatureConfig",
    "Outcome",
    "Profile",
    "ProfileConfig",
    "UserState",
    "apply_event",
    "decode_state",
    "describe",
    "encode_state",
    "feature_vector",
]
