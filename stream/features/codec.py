"""The users changelog form of a ``UserState``: what ``encode_state`` writes and
``decode_state`` reads back.

Format 4 is format 3's JSON array compressed with zstd and a dictionary trained on such states
(``stream.packing``): about a third of its size. (Remembered ids as three arrays per kind, ts
counted back from ``max_ts``, compressed 5% smaller, but building them cost more than the
compression itself.) Formats 3 and 2, plain JSON arrays, are still read.

The changelog is read back from a topic anyone with write access to the broker can write to,
so ``decode_state`` is strict: any bytes either decode into a ``UserState`` whose every field
has the type and bounds the feature core relies on, or raise ``CorruptState``, never another
exception.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import orjson

from stream import packing, strict
from stream.features.profile import Profile
from stream.features.state import UserState, key_of
from stream.features.wire import event_from_wire, event_to_wire

__all__ = [
    "MAX_STATE_BYTES",
    "decode_state",
    "encode_state",
    "is_packed_state",
    "renamed",
    "state_json",
]

#: 4: the byte 4, then a zstd frame (``stream.packing``) of format 3's array (its first item
#: 4); 3 (still read): a plain JSON array, each seen id keeping ``[ts, fingerprint]``; 2 (still
#: read): only its ts.
_STATE_FORMAT = 4
_JSON_FORMATS = (2, 3)
_PACKED = b"\x04"
#: The largest user state record read back (a Kafka record is far smaller in practice).
MAX_STATE_BYTES = 16 * 2**20


def state_json(state: UserState) -> bytes:
    """The JSON array format 4 compresses: equal states give equal bytes, whatever the arrival
    order (sorted keys)."""
    return orjson.dumps(
        [
            _STATE_FORMAT,
            state.user_id,
            state.base.to_wire(),
            [event_to_wire(e) for e in state.tail],
            state.max_ts,
            state.duplicates,
            state.late,
            state.seen,
        ],
        option=orjson.OPT_SORT_KEYS,
    )


def encode_state(state: UserState) -> bytes:
    """The changelog form (format 4): ``state_json`` compressed; the view is not stored."""
    return _PACKED + packing.pack(state_json(state), packing.USERS_DICTIONARY)


def is_packed_state(data: bytes) -> bool:
    """Whether ``data`` has the shape of ``encode_state``'s form (checked without inflating it:
    tables keep such records as bytes until a user is touched, ``stream.worker.state_cache``)."""
    return len(data) <= MAX_STATE_BYTES and packing.is_packed(data, _PACKED)


def renamed(data: bytes, user_id: str) -> bytes:
    """An encoded state as another user's: the same history under ``user_id`` (the state holds
    its id, and each tail event's). Benchmarks replicate real states this way.

    >>> decode_state(renamed(encode_state(UserState("u1")), "m7")).user_id
    'm7'
    """
    state = decode_state(data)
    state.user_id = user_id
    state.tail = [dataclasses.replace(e, user_id=user_id) for e in state.tail]
    return encode_state(state)


def decode_state(data: bytes) -> UserState:
    """The ``UserState`` that ``encode_state`` wrote (format 4, or the plain JSON formats 3 and
    2), or ``CorruptState`` for anything else: every field is checked for type, bounds and the
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
    formats = _JSON_FORMATS
    if isinstance(data, bytes | bytearray | memoryview) and data[:1] == _PACKED:
        if len(data) > MAX_STATE_BYTES:
            raise strict.fail(f"{len(data)} bytes > {MAX_STATE_BYTES}")
        data, formats = packing.unpack(bytes(data[1:]), MAX_STATE_BYTES), (_STATE_FORMAT,)
    fields = strict.versioned_array(data, max_bytes=MAX_STATE_BYTES, formats=formats, fields=8)
    fmt, user_id, base, tail, max_ts, duplicates, late, seen = fields
    user_id = strict.need_str(user_id, "user_id")
    profile = Profile.from_wire(base)
    events = [event_from_wire(w, user_id) for w in strict.need_list(tail, "tail")]
    max_ts = strict.opt_int(max_ts, "max_ts", 0, strict.MAX_TS)
    if events:
        if max_ts is None or max_ts < events[-1].ts:
            raise strict.fail("max_ts is older than the tail's newest event")
        keys = [key_of(e) for e in events]
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
