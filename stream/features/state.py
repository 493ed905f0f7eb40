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

The changelog form (``encode_state``/``decode_state``) is read back from a topic anyone with
write access to the broker can write to, so ``decode_state`` is strict: any bytes either decode
into a ``UserState`` whose every field has the type and bounds the feature core relies on, or
raise ``CorruptState``, never another exception.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream import strict
from stream.contract.events import CartChange, Click, Event, Order, OrderLine
from stream.features.profile import Profile, ProfileConfig
from stream.features.schema import FEATURE_NAMES, schema_hash

__all__ = [
    "MAX_STATE_BYTES",
    "SCHEMA_HASH",
    "FeatureConfig",
    "Outcome",
    "UserState",
    "apply_event",
    "decode_state",
    "describe",
    "encode_state",
    "feature_vector",
    "fingerprint",
]

#: 3: each seen event id keeps ``[ts, fingerprint]``; 2 (still read): only its ts.
_STATE_FORMAT = 3
_READABLE_FORMATS = (2, 3)
#: The largest user state record read back (a Kafka record is far smaller in practice).
MAX_STATE_BYTES = 16 * 2**20


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
        return encode_state(self) == encode_state(other)


def _key(event: Event) -> tuple[int, str]:
    return (event.ts, event.event_id)


def fingerprint(event: Event) -> int:
    """A 32-bit CRC of the event's canonical wire form: equal events, equal fingerprints.

    >>> a = Click(event_id="e1", user_id="u1", ts=1_767_225_600_000, item_id="i1")
    >>> fingerprint(a) == fingerprint(Click("e1", "u1", 1_767_225_600_000, "i1"))
    True
    >>> fingerprint(a) == fingerprint(Click("e1", "u1", 1_767_225_600_000, "i2"))
    False
    """
    return zlib.crc32(orjson.dumps(_event_to_wire(event)))


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
    key = _key(event)
    if not tail or key >= _key(tail[-1]):
        tail.append(event)
        if state.view is not None:
            state.view.apply(event, config.profile)  # in order: extend the view
            _keep_mark_behind(state, config)
    else:
        index = bisect.bisect_right(tail, key, key=_key)
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
    """The ``UserState`` that ``encode_state`` wrote (format 3, or format 2), or
    ``CorruptState`` for anything else: every field is checked for type, bounds and the
    invariants the feature core relies on, so a forged record cannot crash scoring later.

    >>> decode_state(encode_state(UserState("u1"))) == UserState("u1")
    True
    >>> decode_state(b'[2, "x"]')
    Traceback (most recent call last):
    ...
    stream.errors.CorruptState: user state: expected 8 fields, got 2
    """
    return strict.decoded("user state", _decode_state, data)


_KINDS = ("click", "cart", "order")
_MAX_FINGERPRINT = 2**32 - 1


def _decode_state(data: bytes) -> UserState:
    fields = strict.versioned_array(
        data, max_bytes=MAX_STATE_BYTES, formats=_READABLE_FORMATS, fields=8
    )
    fmt, user_id, base, tail, max_ts, duplicates, late, seen = fields
    user_id = strict.need_str(user_id, "user_id")
    profile = Profile.from_wire(base)
    events = [_event_from_wire(w, user_id) for w in strict.need_list(tail, "tail")]
    max_ts = strict.opt_int(max_ts, "max_ts", 0, strict.MAX_TS)
    if events:
        if max_ts is None or max_ts < events[-1].ts:
            raise strict.fail("max_ts is older than the tail's newest event")
        keys = [_key(e) for e in events]
        if any(a > b for a, b in itertools.pairwise(keys)):
            raise strict.fail("the tail is not in event-time order")
    return UserState(
        user_id=user_id,
        base=profile,
        tail=events,
        max_ts=max_ts,
        duplicates=strict.need_int(duplicates, "duplicates"),
        late=strict.need_int(late, "late"),
        seen=_seen_from_wire(seen, fmt),
    )


def _seen_from_wire(seen: Any, fmt: int) -> dict[str, dict[str, tuple[int, int | None]]]:
    out: dict[str, dict[str, tuple[int, int | None]]] = {}
    max_ts, max_len = strict.MAX_TS, strict.MAX_STRING
    for kind, ids in strict.need_dict(seen, "seen", len(_KINDS)).items():
        if kind not in _KINDS:
            raise strict.fail(f"seen has an unknown event kind {kind[:20]!r}")
        entries: dict[str, tuple[int, int | None]] = {}
        for event_id, entry in strict.need_dict(ids, f"seen[{kind}]").items():
            if len(event_id) > max_len:
                raise strict.fail("a seen event id is too long")
            if fmt == 2:
                entries[event_id] = (strict.need_int(entry, "seen ts", 0, max_ts), None)
                continue
            # The common case checked inline (a state holds hundreds of these), else in detail.
            if type(entry) is list and len(entry) == 2:
                ts, stored = entry
                if (
                    type(ts) is int
                    and 0 <= ts <= max_ts
                    and type(stored) is int
                    and 0 <= stored <= _MAX_FINGERPRINT
                ):
                    entries[event_id] = (ts, stored)
                    continue
            ts, stored = strict.need_list(entry, "seen entry", length=2)
            entries[event_id] = (
                strict.need_int(ts, "seen ts", 0, max_ts),
                strict.opt_int(stored, "seen fingerprint", 0, _MAX_FINGERPRINT),
            )
        out[kind] = entries
    return out


def _event_from_wire(w: Any, user_id: str) -> Event:
    """A tail event: the common, valid case checked inline (a state holds many), anything else
    by ``_checked_event`` (which says what is wrong)."""
    if type(w) is list and len(w) == 8 and w[0] == "c":
        _c, event_id, uid, ts, item_id, category, price, session_id = w
        if (
            uid == user_id
            and type(ts) is int
            and 0 <= ts <= _MAX_TS
            and type(event_id) is str
            and type(item_id) is str
            and type(category) is str
            and len(event_id) + len(item_id) + len(category) <= _MAX_STRING
            # NaN and infinities fail the comparison; an int is a price too (and stays one).
            and (price is None or (type(price) in _NUMBERS and 0 <= price <= _MAX_NUMBER))
            and (session_id is None or (type(session_id) is str and len(session_id) <= _MAX_STRING))
        ):
            return Click(event_id, user_id, ts, item_id, category, price, session_id)
    return _checked_event(w, user_id)


_MAX_TS, _MAX_STRING, _MAX_NUMBER = strict.MAX_TS, strict.MAX_STRING, strict.MAX_NUMBER
_NUMBERS = (float, int)


def _checked_event(w: Any, user_id: str) -> Event:
    wire = strict.need_list(w, "tail event", max_len=10)
    if not wire:
        raise strict.fail("empty tail event")
    tag = wire[0]
    expected = {"c": 8, "k": 10, "o": 8}.get(tag) if type(tag) is str else None
    if expected is None:
        raise strict.fail(f"unknown tail event tag {str(tag)[:10]!r}")
    if len(wire) != expected:
        raise strict.fail(f"a {tag!r} tail event needs {expected} fields, has {len(wire)}")
    event_id = strict.need_str(wire[1], "event_id")
    if strict.need_str(wire[2], "event user_id") != user_id:
        raise strict.fail("a tail event belongs to another user")
    ts = strict.need_int(wire[3], "event ts", 0, strict.MAX_TS)
    if tag == "c":
        _c, _e, _u, _t, item_id, category, price, session_id = wire
        return Click(
            event_id,
            user_id,
            ts,
            strict.need_str(item_id, "item_id"),
            strict.need_str(category, "category"),
            _opt_price(price, "price"),
            strict.opt_str(session_id, "session_id"),
        )
    if tag == "k":
        _k, _e, _u, _t, item_id, action, category, price, quantity, session_id = wire
        if action not in ("add", "remove"):
            raise strict.fail("a cart event's action is neither 'add' nor 'remove'")
        return CartChange(
            event_id,
            user_id,
            ts,
            strict.need_str(item_id, "item_id"),
            action,
            strict.need_str(category, "category"),
            _opt_price(price, "price"),
            strict.need_int(quantity, "quantity", 1, 2**31),
            strict.opt_str(session_id, "session_id"),
        )
    _o, _e, _u, _t, order_id, lines, total, session_id = wire
    items = []
    for line in strict.need_list(lines, "order lines", max_len=100_000):
        item_id, price, quantity, category = strict.need_list(line, "order line", length=4)
        items.append(
            OrderLine(
                strict.need_str(item_id, "line item_id"),
                strict.need_num(price, "line price", 0.0),
                strict.need_int(quantity, "line quantity", 1, 2**31),
                strict.need_str(category, "line category"),
            )
        )
    if not items:
        raise strict.fail("an order without lines")
    return Order(
        event_id,
        user_id,
        ts,
        strict.need_str(order_id, "order_id"),
        tuple(items),
        strict.need_num(total, "total", 0.0),
        strict.opt_str(session_id, "session_id"),
    )


def _opt_price(value: Any, name: str) -> float | None:
    return None if value is None else strict.need_num(value, name, 0.0)
