"""Per-user state: how one event changes it, exactly once, in event-time order within lateness.

The state is ``base`` (a ``Profile`` of every event older than ``max_ts - allowed_lateness``,
folded in event-time order) plus ``tail`` (the newer events, kept sorted). An out-of-order
event inside the allowed lateness is inserted into the tail, so the result is the same as if
events had arrived in order: the state is a function of the *set* of events applied, whatever
their arrival order. Older events are ``LATE`` and go to the dead-letter topic.

It also remembers the ids of recently applied events, so an event redelivered after a crash
(Kafka at-least-once) is recognised and not applied twice (design principle 3). With each id it
keeps a 32-bit fingerprint of the event's content (a CRC of its canonical wire form): an id that
comes back with other content is not a redelivery but a ``CONFLICT`` (dead-lettered as
``conflicting_duplicate``), never silently merged or counted as a duplicate.

Its changelog form is in ``stream.features.codec``, its events' in ``stream.features.wire``.
"""

from __future__ import annotations

import bisect
import enum
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.contract.events import Event
from stream.features.profile import Profile, ProfileConfig
from stream.features.schema import FEATURE_NAMES, schema_hash
from stream.features.wire import event_to_wire

__all__ = [
    "SCHEMA_HASH",
    "FeatureConfig",
    "Outcome",
    "UserState",
    "apply_event",
    "current_profile",
    "describe",
    "feature_vector",
    "fingerprint",
    "key_of",
]


class Outcome(enum.Enum):
    """What ``apply_event`` did with an event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"
    #: The event id was applied before with other content: refused, the state is unchanged.
    CONFLICT = "conflict"


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

    def settings(self) -> dict[str, int]:
        """Every knob that changes a feature's value, by the name an operator sets it with
        (``SHOPSCORE_*``; the two fixed ones by their field names). Training records them in
        each model's manifest; the worker compares its own with them."""
        return {
            "SHOPSCORE_ALLOWED_LATENESS": self.allowed_lateness_ms,
            "SHOPSCORE_DEDUP_HORIZON": self.dedup_horizon_ms,
            "SHOPSCORE_DEDUP_MAX_IDS": self.dedup_max_ids,
            "SHOPSCORE_SESSION_GAP": self.profile.session_gap_ms,
            "affinity_half_life_ms": self.profile.affinity_half_life_ms,
            "recent": self.profile.recent,
        }

    def schema_hash(self) -> str:
        """The feature schema's hash under these settings (what a model must be trained on)."""
        return schema_hash(self.settings())


#: The feature schema's hash under the default settings (the shipped models' schema).
SCHEMA_HASH = FeatureConfig().schema_hash()


@dataclass(slots=True)
class UserState:
    """Everything shopscore keeps about one user."""

    user_id: str
    base: Profile = field(default_factory=Profile)
    tail: list[Event] = field(default_factory=list)
    max_ts: int | None = None
    duplicates: int = 0
    late: int = 0
    #: Recently applied event ids with ``(ts, fingerprint)``, per event kind: an input topic
    #: can run ahead of another in event time, so each kind is pruned by its own clock. The
    #: fingerprint (``fingerprint``) is None for ids remembered by a format-2 state.
    seen: dict[str, dict[str, tuple[int, int | None]]] = field(default_factory=dict)
    #: ``base`` with ``tail`` applied; derived, rebuilt on demand, never serialized.
    view: Profile | None = None
    #: ``(n, base with tail[:n] applied)``, kept a few events behind the tail's end while the
    #: view is: an event that arrives slightly out of order (another topic's, a few ms older,
    #: the common case in live traffic) rebuilds the view from here, not from ``base`` through
    #: the whole last hour. Derived, never serialized.
    mark: tuple[int, Profile] | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserState):
            return NotImplemented
        from stream.features.codec import state_json  # the codec builds on this module

        return state_json(self) == state_json(other)

    def remembered(self, kind: str, event_id: str) -> tuple[int, int | None] | None:
        """``(ts, fingerprint)`` of a remembered event id of ``kind`` (fingerprint None: an id
        a format-2 state remembered), or None."""
        return self.seen.get(kind, {}).get(event_id)

    def remembered_count(self, kind: str) -> int:
        return len(self.seen.get(kind, ()))


def key_of(event: Event) -> tuple[int, str]:
    """Tail order: event time, then event id."""
    return (event.ts, event.event_id)


def fingerprint(event: Event) -> int:
    """A 32-bit CRC of the event's canonical wire form: equal events, equal fingerprints.

    >>> from stream.contract.events import Click
    >>> a = Click(event_id="e1", user_id="u1", ts=1_767_225_600_000, item_id="i1")
    >>> fingerprint(a) == fingerprint(Click("e1", "u1", 1_767_225_600_000, "i1"))
    True
    >>> fingerprint(a) == fingerprint(Click("e1", "u1", 1_767_225_600_000, "i2"))
    False
    """
    return zlib.crc32(orjson.dumps(event_to_wire(event)))


def apply_event(state: UserState, event: Event, config: FeatureConfig) -> Outcome:
    """Apply ``event`` to ``state`` in place, unless it is a duplicate or too late.

    >>> from stream.contract.events import Click
    >>> s = UserState("u1")
    >>> e = Click(event_id="e1", user_id="u1", ts=1_767_225_600_000, item_id="i1")
    >>> apply_event(s, e, FeatureConfig()).value, apply_event(s, e, FeatureConfig()).value
    ('applied', 'duplicate')
    >>> old = Click(event_id="e0", user_id="u1", ts=1_767_225_600_000 - 7_200_000, item_id="i1")
    >>> apply_event(s, old, FeatureConfig()).value
    'late'
    >>> reused = Click(event_id="e1", user_id="u1", ts=1_767_225_600_000, item_id="i9")
    >>> apply_event(s, reused, FeatureConfig()).value, s.duplicates
    ('conflict', 1)
    """
    content = fingerprint(event)
    seen = state.seen.get(event.kind)
    if seen is None:
        seen = state.seen[event.kind] = {}
    else:
        known = seen.get(event.event_id)
        if known is not None:
            ts, content_before = known
            # An id remembered without a fingerprint (format 2) can only be judged by its ts.
            same = ts == event.ts if content_before is None else content_before == content
            if not same:
                return Outcome.CONFLICT
            state.duplicates += 1
            return Outcome.DUPLICATE
    lateness = config.allowed_lateness_ms
    if state.max_ts is not None and event.ts < state.max_ts - lateness:
        state.late += 1
        return Outcome.LATE
    seen[event.event_id] = (event.ts, content)
    if len(seen) > config.dedup_max_ids:
        state.seen[event.kind] = _pruned(seen, config)

    tail = state.tail
    key = key_of(event)
    if not tail or key >= key_of(tail[-1]):
        tail.append(event)
        if state.view is not None:
            state.view.apply(event, config.profile)  # in order: extend the view
            _keep_mark_behind(state, config)
    else:
        index = bisect.bisect_right(tail, key, key=key_of)
        tail.insert(index, event)
        # Out of order: the view is rebuilt on the next read, from the mark when the insert
        # is after it (the mark's events are unchanged), else from base.
        state.view = None
        if state.mark is not None and index < state.mark[0]:
            state.mark = None
    if state.max_ts is None or event.ts > state.max_ts:
        state.max_ts = event.ts
    cutoff = state.max_ts - lateness
    folded = 0
    while folded < len(tail) and tail[folded].ts < cutoff:
        state.base.apply(tail[folded], config.profile)
        folded += 1
    if folded:
        del tail[:folded]
        mark = state.mark
        # base + tail[:n] is now (base + the folded events) + tail[:n - folded].
        state.mark = (mark[0] - folded, mark[1]) if mark and mark[0] >= folded else None
    return Outcome.APPLIED


#: How many of the newest tail events the mark stays behind (at most twice this, before it
#: catches up): a rebuild after an event out of order by fewer events costs at most
#: ``2 * _MARK_LAG + 1`` applications instead of the whole tail's.
_MARK_LAG = 8


def _keep_mark_behind(state: UserState, config: FeatureConfig) -> None:
    mark = state.mark
    if mark is None:
        return
    n, profile = mark
    target = len(state.tail) - _MARK_LAG
    if target - n >= _MARK_LAG:
        for event in state.tail[n:target]:
            profile.apply(event, config.profile)
        state.mark = (target, profile)


def _pruned(
    seen: dict[str, tuple[int, int | None]], config: FeatureConfig
) -> dict[str, tuple[int, int | None]]:
    """Amortised pruning, only when over the cap: drop ids beyond the horizon, then the oldest
    half, so the next prune is ``dedup_max_ids / 2`` events away."""
    horizon = max(t for t, _f in seen.values()) - config.dedup_horizon_ms
    kept = sorted(((t, i) for i, (t, _f) in seen.items() if t >= horizon), reverse=True)
    return {i: seen[i] for _t, i in kept[: max(1, config.dedup_max_ids // 2)]}


def current_profile(state: UserState, config: FeatureConfig) -> Profile:
    """``base`` with the tail applied (cached on the state, extended by in-order events). After
    an out-of-order event it is rebuilt from the mark when there is one, else from ``base``;
    the rebuild moves the mark (or sets it) ``_MARK_LAG`` events behind the tail's end."""
    if state.view is None:
        tail, profile = state.tail, config.profile
        n, marked = state.mark if state.mark is not None else (0, None)
        at = len(tail) - _MARK_LAG
        if at > n:
            if marked is None:
                marked = state.base.copy()
            for event in tail[n:at]:
                marked.apply(event, profile)
            n = at
        if marked is not None:
            state.mark = (n, marked)
        view = (state.base if marked is None else marked).copy()
        for event in tail[n:]:
            view.apply(event, profile)
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
        "schema": config.schema_hash(),
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
