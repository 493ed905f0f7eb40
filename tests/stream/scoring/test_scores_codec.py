"""The scores changelog codec: exact round trips and a strict decoder. Any bytes either decode
into a ``UserScores`` that scoring can use (a real ``Scorer`` scores with it without a failure),
or raise ``CorruptState``, never another exception."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream import packing
from stream.contract.events import Click, Order, OrderLine
from stream.errors import CorruptState
from stream.features import FEATURE_NAMES, FeatureConfig, UserState, apply_event
from stream.models.registry import load_models
from stream.scoring.engine import DAY_MS, Scorer, UserInput
from stream.scoring.offers import DEFAULT_ARMS
from stream.scoring.state import MAX_SCORES_BYTES, Learners, UserScores

T0 = 1_767_225_600_000
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCORED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(-1e6, 1e6, allow_nan=False)
unit = st.floats(0.0, 1.0)
stamp = st.integers(T0 - 60 * DAY_MS, T0)
feature_dict = st.dictionaries(st.sampled_from(["onnx_p", "affinity_share", "is_last"]), unit)

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

pending_churn = st.tuples(
    stamp, st.lists(finite, min_size=len(FEATURE_NAMES), max_size=len(FEATURE_NAMES)), unit
).flatmap(lambda t: st.just(list(t)) | st.booleans().map(lambda b: [*t, b]))

scores = st.builds(
    UserScores,
    latest=st.dictionaries(
        st.sampled_from(["scores.churn", "offers", "recs.cart"]),
        st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        max_size=3,
    ),
    churn_pending=st.lists(pending_churn, max_size=5),
    interest_pending=st.none()
    | st.fixed_dictionaries(
        {
            "ts": stamp,
            "ranked": st.lists(st.sampled_from(["books", "toys"]), max_size=2),
            "candidates": st.dictionaries(st.sampled_from(["books", "toys"]), feature_dict),
        }
    ),
    offer_pending=st.none()
    | st.fixed_dictionaries(
        {
            "ts": stamp,
            "arm": st.sampled_from(DEFAULT_ARMS),
            "propensity": unit,
            "context": st.dictionaries(st.sampled_from(["churn", "bias", "log_spend"]), finite),
            "cost": st.floats(0, 1),
        }
    ),
    last_offer_ts=st.none() | stamp,
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


def mutated(data: st.DataObject, encoded: bytes) -> bytes:
    """One mutation of a record: truncated, a byte of its compressed frame changed, or a node of
    its JSON array replaced, deleted, swapped or duplicated (then compressed again)."""
    how = data.draw(st.sampled_from(["replace", "delete", "swap", "duplicate", "truncate"]))
    if how == "truncate":
        return encoded[: data.draw(st.integers(0, len(encoded) - 1))]
    if encoded[:1] != b"\x02":
        return _mutated_tree(data, how, orjson.loads(encoded))
    if data.draw(st.booleans()):
        at = data.draw(st.integers(1, len(encoded) - 1))
        return encoded[:at] + bytes([data.draw(st.integers(0, 255))]) + encoded[at + 1 :]
    tree = orjson.loads(packing.unpack(encoded[1:], MAX_SCORES_BYTES))
    return _two(orjson.loads(_mutated_tree(data, how, tree)))


def _two(tree: Any) -> bytes:
    """The compressed record (format 2) of a format-1 JSON array."""
    return b"\x02" + packing.pack(orjson.dumps(tree), packing.SCORES_DICTIONARY)


def _mutated_tree(data: st.DataObject, how: str, tree: Any) -> bytes:
    path = data.draw(st.sampled_from(_paths(tree)[1:]))
    parent = tree
    for step in path[:-1]:
        parent = parent[step]
    key = path[-1]
    if how == "delete":
        del parent[key]
    elif how == "duplicate" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    elif how == "swap" and isinstance(parent, list) and len(parent) > 1:
        other = data.draw(st.integers(0, len(parent) - 1))
        parent[key], parent[other] = parent[other], parent[key]
    else:
        parent[key] = data.draw(json_values)
    return orjson.dumps(tree)


# -- scoring with a decoded state -----------------------------------------------------------------

_SCORER: list[Scorer] = []


def scorer() -> Scorer:
    if not _SCORER:
        _SCORER.append(Scorer(load_models()))
    return _SCORER[0]


def _user_state() -> UserState:
    state = UserState("u1")
    apply_event(state, Click("c1", "u1", T0, "i1", "books", 10.0), FeatureConfig())
    return state


def assert_scorable(decoded: UserScores) -> None:
    """An order (which resolves churn, offers and interest labels) and a clock tick past every
    horizon, scored by the real engine with the decoded state: no user fails."""
    state = _user_state()
    order = Order("o1", "u1", T0 + 1, "o1", (OrderLine("i1", 10.0, 1, "books"),), 10.0)
    apply_event(state, order, FeatureConfig())
    learners = Learners(seed=0)
    for users, churn_only in (
        ([UserInput("u1", 0, state, decoded, [order], T0 + 1, "o1")], False),
        ([UserInput("u1", 0, state, decoded, [], T0 + 90 * DAY_MS, "clock")], True),
    ):
        result = scorer().score(users, lambda _p: learners, churn_only)
        assert not result.failed, result.failed
    encoded = decoded.to_bytes()  # after scoring: PendingChurn objects, compared as bytes
    assert UserScores.from_bytes(encoded).to_bytes() == encoded


def decode_or_corrupt(data: bytes) -> UserScores | None:
    try:
        decoded = UserScores.from_bytes(data)
    except CorruptState:
        return None
    assert isinstance(decoded, UserScores)
    assert_scorable(decoded)
    return decoded


# -- round trips --------------------------------------------------------------------------------


@FUZZ
@given(scores)
def test_valid_scoring_states_round_trip_exactly(value: UserScores) -> None:
    encoded = value.to_bytes()
    decoded = UserScores.from_bytes(encoded)
    assert decoded == value
    assert decoded.to_bytes() == encoded


@SCORED
@given(scores)
def test_valid_scoring_states_are_scorable(value: UserScores) -> None:
    assert_scorable(UserScores.from_bytes(value.to_bytes()))


# -- strictness ---------------------------------------------------------------------------------

VECTOR = [0.5] * len(FEATURE_NAMES)
OFFER = {"ts": T0, "arm": "none", "propensity": 0.5, "context": {"bias": 1.0}, "cost": 0.0}
INTEREST = {"ts": T0, "ranked": ["books"], "candidates": {"books": {"onnx_p": 0.5}}}


def _record(*fields: Any) -> bytes:
    base = [1, {}, [], None, None, None]
    for index, value in fields:
        base[index] = value
    return orjson.dumps(base)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"[1, {}, 5]",  # the forged record of the changelog test
        b"[2, {}, [], null, null, null]",  # a format from the future
        b"{}",
        b"[" * 3000 + b"]" * 3000,
        _record((1, [])),  # latest not an object
        _record((1, {"scores.churn": 5})),
        _record((1, {"scores.churn": {"a": [[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}})),  # too deep
        _record((1, {f"t{i}": {} for i in range(100)})),  # more topics than exist
        _record((2, {})),  # churn_pending not a list
        _record((2, [[T0, VECTOR]])),  # a prediction without its probability
        _record((2, [[T0, VECTOR[:-1], 0.5]])),  # a vector of the wrong length
        _record((2, [[T0, {"orders": 1.0}, 0.5]])),  # the engine indexes the vector
        _record((2, [[T0, [*VECTOR[:-1], "x"], 0.5]])),
        _record((2, [[str(T0), VECTOR, 0.5]])),
        _record((2, [[T0, VECTOR, 1.5]])),  # a probability above 1
        _record((2, [[T0, VECTOR, 0.5, "yes"]])),
        _record((2, [[T0, VECTOR, 0.5, False, 1]])),
        _record((2, [[T0, VECTOR, 0.5]] * 20_000)),  # more than any horizon keeps
        _record((3, [])),
        _record((3, {"ranked": ["books"]})),  # no candidates
        _record((3, {**INTEREST, "ranked": "books"})),
        _record((3, {**INTEREST, "candidates": {"books": {"onnx_p": "high"}}})),
        _record((3, {**INTEREST, "candidates": {"books": [0.5]}})),
        _record((3, {**INTEREST, "extra": 1})),
        _record((4, {**OFFER, "arm": "50_percent"})),  # an arm the policy does not have
        _record((4, {**OFFER, "arm": 3})),
        _record((4, {k: v for k, v in OFFER.items() if k != "ts"})),
        _record((4, {**OFFER, "ts": "soon"})),
        _record((4, {**OFFER, "propensity": 2.0})),
        _record((4, {**OFFER, "context": {"bias": "1"}})),
        _record((4, {**OFFER, "context": {f"f{i}": 1.0 for i in range(100)}})),
        _record((5, "yesterday")),
        _record((5, -1)),
        _record((5, 2**62)),
    ],
)
def test_malformed_records_are_corrupt_state(data: bytes) -> None:
    with pytest.raises(CorruptState):
        UserScores.from_bytes(data)


def test_an_oversized_record_is_refused_before_parsing() -> None:
    with pytest.raises(CorruptState, match="bytes"):
        UserScores.from_bytes(b" " * (MAX_SCORES_BYTES + 1))


def test_an_interest_ranking_with_a_null_time_is_scorable() -> None:
    # Found by the mutation fuzzing: the decoder lets ``ts`` be null (records from before it
    # was kept), so reading the pending ranking must too.
    decoded = UserScores.from_bytes(_record((3, {**INTEREST, "ts": None})))
    assert_scorable(decoded)


def test_the_old_three_field_pending_form_still_reads() -> None:
    data = _record((2, [[T0, VECTOR, 0.25]]))
    decoded = UserScores.from_bytes(data)
    assert decoded.churn_pending == [[T0, VECTOR, 0.25]]
    assert_scorable(decoded)


# -- fuzzing ------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_are_a_usable_scoring_state_or_corrupt_state(data: bytes) -> None:
    decode_or_corrupt(data)


@FUZZ
@given(json_values)
def test_random_json_is_a_usable_scoring_state_or_corrupt_state(value: Any) -> None:
    decode_or_corrupt(orjson.dumps(value))


@SCORED
@given(st.lists(json_values, min_size=5, max_size=5))
def test_random_fields_are_a_usable_scoring_state_or_corrupt_state(fields: list) -> None:
    decode_or_corrupt(orjson.dumps([1, *fields]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scores, st.data())
def test_mutated_encodings_are_a_usable_scoring_state_or_corrupt_state(value, data) -> None:
    decode_or_corrupt(mutated(data, value.to_bytes()))


def test_the_changelog_form_is_a_compressed_format_1_array() -> None:
    value = UserScores(latest={"scores.churn": {"user_id": "u1", "ts": T0}}, last_offer_ts=T0)
    encoded = value.to_bytes()
    assert encoded[0] == 2
    assert zstandard.get_frame_parameters(encoded[1:]).dict_id == packing.SCORES_DICTIONARY
    assert packing.unpack(encoded[1:], MAX_SCORES_BYTES) == value.to_json()
    assert orjson.loads(value.to_json())[0] == 1
    # Plain format-1 records, written before, read the same.
    assert UserScores.from_bytes(value.to_json()).to_bytes() == encoded
    # So do records compressed with the first scoring dictionary, before the BTYD expert's
    # figures were kept (the dictionary's id is in the frame).
    older = b"\x02" + packing.pack(value.to_json(), 12_001)
    assert zstandard.get_frame_parameters(older[1:]).dict_id == 12_001 != packing.SCORES_DICTIONARY
    assert UserScores.from_bytes(older).to_bytes() == encoded


@pytest.mark.parametrize(
    "data",
    [
        b"\x02",
        b"\x02not zstd",
        b"\x02" + zstandard.ZstdCompressor().compress(b"[1,{},[],null,null,null]"),
        b"\x02" + packing.pack(b" " * (MAX_SCORES_BYTES + 1), packing.SCORES_DICTIONARY),
        _two([2, {}, [], None, None, None]),
        _two([1, {}, 5, None, None, None]),
    ],
)
def test_malformed_compressed_records_are_corrupt_state(data: bytes) -> None:
    with pytest.raises(CorruptState):
        UserScores.from_bytes(data)
