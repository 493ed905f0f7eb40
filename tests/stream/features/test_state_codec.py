"""The users changelog codec: exact round trips, the format-2 records written before, and a
strict decoder. Anyone who can write to the broker can write a changelog record, so any bytes
must either decode into a state the feature core can use (read, extend, re-encode) or raise
``CorruptState``, never another exception."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream import packing
from stream.contract.events import CartChange, Click, Order, OrderLine
from stream.errors import CorruptState
from stream.features import FeatureConfig, Outcome, UserState, apply_event, describe
from stream.features.codec import MAX_STATE_BYTES, decode_state, encode_state, state_json
from stream.features.profile import Profile
from stream.features.state import feature_vector

T0 = 1_767_225_600_000
CONFIG = FeatureConfig()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Written by the format-2 encoder (``git show fea42f1:stream/features/state.py``): a click, a
#: cart add and an order folded into the base, and a click two hours later in the tail.
FORMAT_2 = (
    b'[2,"u1",[[0.9672161004820059,0.9986120751709083,0.9998016069840849,0.9999537047753607,'
    b"0.9834714538216175,0.9993057966262922,0.9999007985715808,0.9999768521197682,0.0,0.0,0.0,"
    b"0.0,1.0,1.0,1.0,1.0,25.0,25.0,25.0,25.0],1767225720000,[1.0,1.0,0,1.0,25.0],1767225600000,"
    b"1767225720000,1767225600000,1767225660000,1767225720000,1767225600000,3,true,true,1,0,{},"
    b'{"books":8.999197836416759},1767225720000,["i1","i1","i1"],["books","books","books"],'
    b'{"books":[37.5,3]},3,0],[["c","e4","u1",1767232800000,"i2","toys",null,null]],'
    b'1767232800000,0,0,{"cart":{"e2":1767225660000},"click":{"e1":1767225600000,'
    b'"e4":1767232800000},"order":{"e3":1767225720000}}]'
)
#: Written by the format-3 encoder (``git show 960044c:stream/features/state.py``) for the same
#: events: each remembered id with its ts and fingerprint.
FORMAT_3 = (
    b'[3,"u1",[[0.9672161004820059,0.9986120751709083,0.9998016069840849,0.9999537047753607,'
    b"0.9834714538216175,0.9993057966262922,0.9999007985715808,0.9999768521197682,0.0,0.0,0.0,"
    b"0.0,1.0,1.0,1.0,1.0,25.0,25.0,25.0,25.0],1767225720000,[1.0,1.0,0,1.0,25.0],1767225600000,"
    b"1767225720000,1767225600000,1767225660000,1767225720000,1767225600000,3,true,true,1,0,{},"
    b'{"books":8.999197836416759},1767225720000,["i1","i1","i1"],["books","books","books"],'
    b'{"books":[37.5,3]},3,0],[["c","e4","u1",1767232800000,"i2","toys",null,null]],'
    b'1767232800000,0,0,{"cart":{"e2":[1767225660000,2017445825]},"click":{"e1":[1767225600000,'
    b'3742657621],"e4":[1767232800000,3761670909]},"order":{"e3":[1767225720000,906187643]}}]'
)
FORMAT_2_EVENTS = [
    Click("e1", "u1", T0, "i1", "books", 12.5, "s1"),
    CartChange("e2", "u1", T0 + 60_000, "i1", "add", "books", 12.5, 2, "s1"),
    Order("e3", "u1", T0 + 120_000, "o1", (OrderLine("i1", 12.5, 2, "books"),), 25.0, "s1"),
    Click("e4", "u1", T0 + 2 * 3_600_000, "i2", "toys", None, None),
]

# -- strategies -------------------------------------------------------------------------------

ids = st.sampled_from([f"e{i}" for i in range(12)])
items = st.sampled_from(["i1", "i2", "i3", "ä-ü"])
categories = st.sampled_from(["books", "toys", "unknown"])
prices = st.one_of(st.none(), st.floats(0, 500).map(lambda p: round(p, 2)))
times = st.integers(T0, T0 + 3 * 3_600_000)


@st.composite
def event(draw: Any) -> Any:
    kind = draw(st.sampled_from(["click", "cart", "order"]))
    eid, ts = draw(ids), draw(times)
    session = draw(st.none() | st.just("s1"))
    if kind == "click":
        return Click(eid, "u", ts, draw(items), draw(categories), draw(prices), session)
    if kind == "cart":
        action = draw(st.sampled_from(["add", "remove"]))
        qty = draw(st.integers(1, 3))
        return CartChange(
            eid, "u", ts, draw(items), action, draw(categories), draw(prices), qty, session
        )
    lines = tuple(
        OrderLine(draw(items), draw(st.floats(0, 300)), draw(st.integers(1, 3)), draw(categories))
        for _ in range(draw(st.integers(1, 3)))
    )
    return Order(eid, "u", ts, "o1", lines, sum(x.price * x.quantity for x in lines), session)


def folded(events: list[Any]) -> UserState:
    state = UserState("u")
    for e in events:
        apply_event(state, e, CONFIG)
    return state


states = st.lists(event(), max_size=20).map(folded)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=6)
    ),
    max_leaves=40,
)


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, list):
        for i, sub in enumerate(value):
            out += _paths(sub, (*path, i))
    elif isinstance(value, dict):
        for k, sub in value.items():
            out += _paths(sub, (*path, k))
    return out


def _get(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


def mutated(data: st.DataObject, encoded: bytes) -> bytes:
    """A valid encoding with one mutation: a JSON node replaced by another JSON value (a type
    change), deleted, swapped with a sibling, duplicated, or the bytes truncated; in format 4
    also a byte of the packed ids changed."""
    how = data.draw(st.sampled_from(["replace", "delete", "swap", "duplicate", "truncate"]))
    if how == "truncate":
        return encoded[: data.draw(st.integers(0, len(encoded) - 1))]
    if encoded[:1] != b"\x04":
        return orjson.dumps(_mutated_tree(data, how, orjson.loads(encoded)))
    if data.draw(st.booleans()):  # a byte of the compressed frame changed
        at = data.draw(st.integers(1, len(encoded) - 1))
        return encoded[:at] + bytes([data.draw(st.integers(0, 255))]) + encoded[at + 1 :]
    tree = orjson.loads(packing.unpack(encoded[1:], MAX_STATE_BYTES))
    return _four(_mutated_tree(data, how, tree))


def _four(tree: Any) -> bytes:
    """A format-4 record of the JSON array ``tree``."""
    return b"\x04" + packing.pack(orjson.dumps(tree), packing.USERS_DICTIONARY)


def _mutated_tree(data: st.DataObject, how: str, tree: Any) -> Any:
    path = data.draw(st.sampled_from(_paths(tree)[1:]))
    parent, key = _get(tree, path[:-1]), path[-1]
    if how == "replace":
        parent[key] = data.draw(json_values)
    elif how == "delete":
        del parent[key]
    elif how == "duplicate" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    elif how == "swap" and isinstance(parent, list) and len(parent) > 1:
        other = data.draw(st.integers(0, len(parent) - 1))
        parent[key], parent[other] = parent[other], parent[key]
    else:
        parent[key] = data.draw(json_values)
    return tree


def assert_usable(state: UserState) -> None:
    """What the worker does with a decoded state never raises."""
    at = (state.max_ts or T0) + 60_000
    assert len(feature_vector(state, at, CONFIG)) > 0
    describe(state, None, CONFIG)
    again = decode_state(encode_state(state))
    assert again == state
    later = Click("fresh-id", state.user_id, at, "i1", "books", 3.0)
    apply_event(again, later, CONFIG)
    feature_vector(again, at, CONFIG)
    assert decode_state(encode_state(again)) == again


def decode_or_corrupt(data: bytes) -> UserState | None:
    try:
        state = decode_state(data)
    except CorruptState:
        return None
    assert isinstance(state, UserState)
    assert_usable(state)
    return state


# -- round trips ------------------------------------------------------------------------------


@FUZZ
@given(states)
def test_valid_states_round_trip_exactly(state: UserState) -> None:
    encoded = encode_state(state)
    decoded = decode_state(encoded)
    assert decoded == state
    assert encode_state(decoded) == encoded
    assert feature_vector(decoded, T0 + 10**7, CONFIG) == feature_vector(state, T0 + 10**7, CONFIG)
    assert_usable(decoded)


@FUZZ
@given(st.lists(event(), max_size=15), st.randoms(use_true_random=False))
def test_equal_states_encode_equally_whatever_the_arrival_order(events, rng) -> None:
    # Unique ids, all within the allowed lateness of each other: every order applies them all.
    events = [
        dataclasses.replace(e, event_id=f"x{i}", ts=T0 + (e.ts - T0) % 3_000_000)
        for i, e in enumerate(events)
    ]
    shuffled = list(events)
    rng.shuffle(shuffled)
    in_order = folded(sorted(events, key=lambda e: (e.ts, e.event_id)))
    assert encode_state(folded(shuffled)) == encode_state(in_order)


def test_the_current_format_is_4_a_compressed_json_array() -> None:
    state = folded([Click("e1", "u", T0, "i1"), Click("e2", "u", T0 + 5, "i1")])
    data = encode_state(state)
    assert data[0] == 4
    assert zstandard.get_frame_parameters(data[1:]).dict_id == packing.USERS_DICTIONARY
    fields = orjson.loads(packing.unpack(data[1:], MAX_STATE_BYTES))
    # Format 3's array, numbered 4: each remembered id with its ts and fingerprint.
    assert fields[0] == 4 and fields[4] == T0 + 5
    assert fields[7]["click"] == {i: list(state.remembered("click", i)) for i in ("e1", "e2")}
    assert len(data) < len(state_json(state)) / 2


def test_format_3_records_still_read() -> None:
    old = decode_state(FORMAT_3)
    fresh = UserState("u1")
    for e in FORMAT_2_EVENTS:
        apply_event(fresh, e, CONFIG)
    assert old == fresh
    assert apply_event(old, FORMAT_2_EVENTS[0], CONFIG) is Outcome.DUPLICATE
    moved = Click("e1", "u1", T0, "i1", "books", 13.0, "s1")  # same ts, other content
    assert apply_event(old, moved, CONFIG) is Outcome.CONFLICT


def test_format_2_records_still_read() -> None:
    old = decode_state(FORMAT_2)
    fresh = UserState("u1")
    for e in FORMAT_2_EVENTS:
        apply_event(fresh, e, CONFIG)
    assert feature_vector(old, T0 + 10**7, CONFIG) == feature_vector(fresh, T0 + 10**7, CONFIG)
    assert old.tail == fresh.tail and old.max_ts == fresh.max_ts
    # The ids it remembers have no fingerprint: a redelivery is recognised by its ts alone.
    assert old.remembered("click", "e1") == (T0, None)
    assert apply_event(old, FORMAT_2_EVENTS[0], CONFIG) is Outcome.DUPLICATE
    moved = Click("e1", "u1", T0 + 1, "i1", "books", 12.5, "s1")
    assert apply_event(old, moved, CONFIG) is Outcome.CONFLICT
    # Re-encoded in format 4, it reads back the same, its old ids still without fingerprints.
    again = decode_state(encode_state(old))
    assert again == old and again.remembered("click", "e1") == (T0, None)
    assert encode_state(old)[0] == 4


# -- strictness -------------------------------------------------------------------------------

GOOD = orjson.loads(FORMAT_3)


def _with(path: tuple, value: Any) -> bytes:
    tree = copy.deepcopy(GOOD)
    _get(tree, path[:-1])[path[-1]] = value
    return orjson.dumps(tree)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"null",
        b"[]",
        b"{}",
        b'[2, "x"]',  # the record
        b'[3, "x"]',
        b"[4" + encode_state(UserState("u"))[2:],  # a format from the future
        b'["3"' + encode_state(UserState("u"))[2:],
        b"[" * 5000 + b"]" * 5000,  # deeper than orjson reads
        _with((1,), 7),  # user_id not a string
        _with((1,), "u" * 70_000),  # an absurd id
        _with((2,), []),  # profile of no fields
        _with((2, 0), [0.0] * 3),  # decayed of the wrong length
        _with((2, 0, 0), "1"),  # a counter that is a string
        _with((2, 0, 0), -1.0),  # a negative count
        _with((2, 0, 0), 1e300),  # beyond any real count: vectors would overflow
        _with((2, 1), 10**15),  # decay_ts after last_ts: exp() of a huge number later
        _with((2, 4), None),  # last_ts gone while decay_ts is set
        _with((2, 9), 2**60),  # a counter beyond 2**53
        _with((2, 9), True),  # a bool is not a count
        _with((2, 10), 1),  # a count is not a bool
        _with((2, 14), {"i1": [1]}),  # a cart line without a price
        _with((2, 14), {"i1": ["1", 2.0]}),
        _with((2, 15), {"books": "much"}),
        _with((2, 17), ["i1", 5]),  # recent items of the wrong type
        _with((2, 17), ["i1"]),  # recent items and categories of different lengths
        _with((2, 19), {"books": [1.0, 0.5]}),  # a price count that is not an int
        _with((3,), {"c": 1}),  # tail not a list
        _with((3, 0), ["z", "e4", "u1", T0, "i2", "toys", None, None]),  # unknown tag
        _with((3, 0), ["c", "e4", "u1", T0, "i2", "toys", None]),  # a field short
        _with((3, 0), ["c", "e4", "u1", str(T0), "i2", "toys", None, None]),
        _with((3, 0), ["c", "e4", "u1", T0 + 10**7, "i2", "toys", None, None]),  # after max_ts
        _with((3, 0), ["c", "e4", "u2", T0, "i2", "toys", None, None]),  # another user's
        _with((3, 0), ["c", "e4", "u1", T0, "i2", "toys", -3.0, None]),  # negative price
        _with((3, 0), ["c", "e4", "u1", T0, "i2", None, None, None]),  # category None
        _with((3, 0), ["c", "e4", "u1", T0, ["i2"], "toys", None, None]),
        _with((3, 0), ["k", "e4", "u1", T0, "i2", "buy", "toys", None, 1, None]),
        _with((3, 0), ["k", "e4", "u1", T0, "i2", "add", "toys", None, 1.5, None]),
        _with((3, 0), ["k", "e4", "u1", T0, "i2", "add", "toys", None, 0, None]),
        _with((3, 0), ["o", "e4", "u1", T0, "o1", [], 0.0, None]),  # an order of no lines
        _with((3, 0), ["o", "e4", "u1", T0, "o1", [["i1", 1.0, 1]], 1.0, None]),
        _with((3, 0), ["o", "e4", "u1", T0, "o1", [["i1", 1.0, 1, "b"]], "1", None]),
        _with((4,), -5),  # max_ts negative
        _with((4,), None),  # no max_ts while the tail has events
        _with((5,), -1),
        _with((5,), 1.5),
        _with((7,), {"clicks": {}}),  # an unknown event kind
        _with((7, "click", "e1"), [T0]),  # a seen entry without its fingerprint
        _with((7, "click", "e1"), [T0, 2**32]),  # a fingerprint beyond 32 bits
        _with((7, "click", "e1"), T0),  # a format-2 entry in a format-3 record
    ],
)
def test_malformed_records_are_corrupt_state(data: bytes) -> None:
    with pytest.raises(CorruptState):
        decode_state(data)


TREE_4 = orjson.loads(state_json(decode_state(FORMAT_3)))


def _with_4(path: tuple, value: Any) -> bytes:
    tree = copy.deepcopy(TREE_4)
    _get(tree, path[:-1])[path[-1]] = value
    return _four(tree)


@pytest.mark.parametrize(
    "data",
    [
        b"\x04",
        b"\x04not a zstd frame",
        b"\x04" + zstandard.ZstdCompressor().compress(b"[4]"),  # no (shipped) dictionary
        b"\x04" + packing.pack(b" " * (MAX_STATE_BYTES + 1), packing.USERS_DICTIONARY),
        _four(orjson.loads(FORMAT_3)),  # a format-3 array in a format-4 frame
        _four([4, "u1"]),
        _with_4((7,), {"clicks": {}}),  # an unknown kind
        _with_4((7, "click", "e1"), [T0]),  # a seen entry without its fingerprint
        _with_4((7, "click", "e1"), [T0, 2**32]),  # a fingerprint beyond 32 bits
        _with_4((3, 0), ["c", "e4", "u2", T0, "i2", "toys", None, None]),  # another user's
    ],
)
def test_malformed_format_4_records_are_corrupt_state(data: bytes) -> None:
    with pytest.raises(CorruptState):
        decode_state(data)


def test_format_4_keeps_format_2_ids_without_fingerprints() -> None:
    state = decode_state(_with_4((7, "click"), {"e1": [T0, None], "e4": [T0 + 9, 3]}))
    assert state.remembered("click", "e1") == (T0, None)
    assert state.remembered("click", "e4") == (T0 + 9, 3)
    assert decode_state(encode_state(state)) == state


def test_an_oversized_record_is_refused_before_parsing() -> None:
    with pytest.raises(CorruptState, match="bytes"):
        decode_state(b" " * (MAX_STATE_BYTES + 1))


def test_profile_from_wire_is_strict_on_its_own() -> None:
    assert Profile.from_wire(Profile().to_wire()) == Profile()
    for bad in (None, [], "x", [0] * 22, {"a": 1}):
        with pytest.raises(CorruptState):
            Profile.from_wire(bad)


# -- fuzzing ------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_are_a_usable_state_or_corrupt_state(data: bytes) -> None:
    decode_or_corrupt(data)


@FUZZ
@given(json_values)
def test_random_json_is_a_usable_state_or_corrupt_state(value: Any) -> None:
    decode_or_corrupt(orjson.dumps(value))


@FUZZ
@given(st.lists(json_values, min_size=8, max_size=8), st.sampled_from([2, 3]))
def test_random_fields_are_a_usable_state_or_corrupt_state(fields: list, fmt: int) -> None:
    decode_or_corrupt(orjson.dumps([fmt, *fields[1:]]))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states, st.data())
def test_mutated_encodings_are_a_usable_state_or_corrupt_state(state, data) -> None:
    decode_or_corrupt(mutated(data, encode_state(state)))


@FUZZ
@given(st.data())
def test_mutated_format_2_records_are_a_usable_state_or_corrupt_state(data) -> None:
    decode_or_corrupt(mutated(data, FORMAT_2))
