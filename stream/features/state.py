"""Per-user state: how one event changes it, exactly once, in event-time order within lateness.

The state is ``base`` (a ``Profile`` of every event older than ``max_ts - allowed_lateness``,
folded in event-time order) plus ``tail`` (the newer events, kept sorted). An out-of-order
event inside the allowed lateness is inserted into the tail, so the result is the same as if
events had arrived in order: the state is a function of the *set* of events applied, whatever
their arrival order. Older events are ``LATE`` and go to the dead-letter topic.

It also remembers the ids of recently applied events, so an event redelivered after a crash
(Kafka at-least-once) is recognised and not applied twice (design principle 3).
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.events import CartChange, Click, Event, Order, OrderLine
from stream.features.profile import Profile, ProfileConfig
from stream.features.schema import FEATURE_NAMES, SCHEMA_HASH

__all__ = [
    "FeatureConfig",
    "Outcome",
    "UserState",
    "apply_event",
    "decode_state",
    "describe",
    "encode_state",
    "feature_vector",
]

_STATE_FORMAT = 2


class Outcome(enum.Enum):
    """What ``apply_event`` did with an event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


@dataclass(frozen=True)
class FeatureConfig:
    """Knobs of the feature core, built from ``Settings`` by the worker and by offline training.

    ``allowed_lateness_ms``: how far behind the user's newest event an event may arrive and
    still be applied in its place. ``dedup_horizon_ms``/``dedup_max_ids``: how long and how many
    applied event ids are remembered per user and kind.
    """

    allowed_lateness_ms: int = 3_600_000
    dedup_horizon_ms: int = 86_400_000
    dedup_max_ids: int = 256
    profile: ProfileConfig = field(default_factory=ProfileConfig)


@dataclass(slots=True)
class UserState:
    """Everything shopscore keeps about one user."""

    user_id: str
    base: Profile = field(default_factory=Profile)
    tail: list[Event] = field(default_factory=list)
    max_ts: int | None = None
    duplicates: int = 0
    late: int = 0
    #: Recently applied event ids with their ts, per event kind: an input topic can run ahead
    #: of another in event time, so each kind is pruned by its own clock.
    seen: dict[str, dict[str, int]] = field(default_factory=dict)
    #: ``base`` with ``tail`` applied; derived, rebuilt on demand, never serialized.
    view: Profile | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserState):
            return NotImplemented
        return encode_state(self) == encode_state(other)


def _key(event: Event) -> tuple[int, str]:
    return (event.ts, event.event_id)


def apply_event(state: UserState, event: Event, config: FeatureConfig) -> Outcome:
    """Apply ``event`` to ``state`` in place, unless it is a duplicate or too late.

    >>> from stream.events import Click
    >>> s = UserState("u1")
    >>> e = Click(event_id="e1", user_id="u1", ts=1_767_225_600_000, item_id="i1")
    >>> apply_event(s, e, FeatureConfig()).value, apply_event(s, e, FeatureConfig()).value
    ('applied', 'duplicate')
    >>> old = Click(event_id="e0", user_id="u1", ts=1_767_225_600_000 - 7_200_000, item_id="i1")
    >>> apply_event(s, old, FeatureConfig()).value
    'late'
    """
    seen = state.seen.get(event.kind)
    if seen is None:
        seen = state.seen[event.kind] = {}
    elif event.event_id in seen:
        state.duplicates += 1
        return Outcome.DUPLICATE
    lateness = config.allowed_lateness_ms
    if state.max_ts is not None and event.ts < state.max_ts - lateness:
        state.late += 1
        return Outcome.LATE
    seen[event.event_id] = event.ts
    if len(seen) > config.dedup_max_ids:
        state.seen[event.kind] = _pruned(seen, config)

    tail = state.tail
    key = _key(event)
    if not tail or key >= _key(tail[-1]):
        tail.append(event)
        if state.view is not None:
            state.view.apply(event, config.profile)  # in order: extend the view
    else:
        bisect.insort(tail, event, key=_key)
        state.view = None  # out of order: rebuild from base on the next read
    if state.max_ts is None or event.ts > state.max_ts:
        state.max_ts = event.ts
    cutoff = state.max_ts - lateness
    folded = 0
    while folded < len(tail) and tail[folded].ts < cutoff:
        state.base.apply(tail[folded], config.profile)
        folded += 1
    if folded:
        del tail[:folded]
    return Outcome.APPLIED


def _pruned(seen: dict[str, int], config: FeatureConfig) -> dict[str, int]:
    """Amortised pruning, only when over the cap: drop ids beyond the horizon, then the oldest
    half, so the next prune is ``dedup_max_ids / 2`` events away."""
    horizon = max(seen.values()) - config.dedup_horizon_ms
    kept = sorted(((t, i) for i, t in seen.items() if t >= horizon), reverse=True)
    return {i: t for t, i in kept[: max(1, config.dedup_max_ids // 2)]}


def current_profile(state: UserState, config: FeatureConfig) -> Profile:
    """``base`` with the tail applied (cached on the state until an out-of-order event)."""
    if state.view is None:
        view = state.base.copy()
        for event in state.tail:
            view.apply(event, config.profile)
        state.view = view
    return state.view


def feature_vector(state: UserState, at_ms: int, config: FeatureConfig) -> list[float]:
    """The fixed-length feature vector (``FEATURE_NAMES``) as of event time ``at_ms``."""
    return current_profile(state, config).vector(at_ms, config.profile)


def describe(state: UserState, at_ms: int | None, config: FeatureConfig) -> dict[str, Any]:
    """The user's named features and context, for ``GET /users/{id}`` and tests."""
    at = state.max_ts if at_ms is None else max(at_ms, state.max_ts or at_ms)
    profile = current_profile(state, config)
    vector = profile.vector(at or 0, config.profile)
    return {
        "event_time": at,
        "schema": SCHEMA_HASH,
        "features": dict(zip(FEATURE_NAMES, vector, strict=True)),
        "top_categories": [
            {"category": c, "share": round(p, 6)}
            for c, p in profile.top_categories(at or 0, config.profile)
        ],
        "recent_items": list(profile.recent_items),
        "recent_categories": list(profile.recent_categories),
        "cart": {item: q for item, (q, _p) in sorted(profile.cart.items())},
        "duplicates": state.duplicates,
        "late": state.late,
    }


# -- changelog form ----------------------------------------------------------------------------


def _event_to_wire(e: Event) -> list[Any]:
    if isinstance(e, Click):
        return ["c", e.event_id, e.user_id, e.ts, e.item_id, e.category, e.price, e.session_id]
    if isinstance(e, CartChange):
        return [
            "k", e.event_id, e.user_id, e.ts, e.item_id, e.action, e.category, e.price,
            e.quantity, e.session_id,
        ]  # fmt: skip
    lines = [[line.item_id, line.price, line.quantity, line.category] for line in e.items]
    return ["o", e.event_id, e.user_id, e.ts, e.order_id, lines, e.total, e.session_id]


def _event_from_wire(w: list[Any]) -> Event:
    if w[0] == "c":
        return Click(*w[1:])
    if w[0] == "k":
        return CartChange(*w[1:])
    lines = tuple(OrderLine(*line) for line in w[5])
    return Order(w[1], w[2], w[3], w[4], lines, w[6], w[7])


def encode_state(state: UserState) -> bytes:
    """Compact changelog form: a versioned JSON array (orjson); the view is not stored."""
    return orjson.dumps(
        [
            _STATE_FORMAT,
            state.user_id,
            state.base.to_wire(),
            [_event_to_wire(e) for e in state.tail],
            state.max_ts,
            state.duplicates,
            state.late,
            state.seen,
        ],
        option=orjson.OPT_SORT_KEYS,  # equal states encode equally, whatever the arrival order
    )


def decode_state(data: bytes) -> UserState:
    fields = orjson.loads(data)
    if fields[0] != _STATE_FORMAT:
        raise ValueError(f"unknown user state format {fields[0]!r}; replay the changelog")
    return UserState(
        user_id=fields[1],
        base=Profile.from_wire(fields[2]),
        tail=[_event_from_wire(w) for w in fields[3]],
        max_ts=fields[4],
        duplicates=fields[5],
        late=fields[6],
        seen=fields[7],
    )
