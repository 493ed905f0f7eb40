"""The table codecs never raise on load, whatever bytes a changelog holds (``stream.worker.tables``)."""

from __future__ import annotations

import orjson
from faust.serializers import codecs
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.features import UserState, encode_state
from stream.features.codec import is_packed_state
from stream.scoring.state import UserScores
from stream.worker.tables import (
    CLOCK_CODEC,
    SCORES_CODEC,
    STATE_CODEC,
    Corrupt,
    decode_scores,
    decode_user,
)

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=8), inner, max_size=8)
    ),
    max_leaves=40,
)
_payloads = st.binary(max_size=512) | _json.map(orjson.dumps)


@settings(max_examples=300, deadline=None)
@given(_payloads)
def test_state_codec_loads_a_state_or_corrupt(data: bytes) -> None:
    value = codecs.loads(STATE_CODEC, data)
    assert isinstance(value, (UserState, Corrupt)) or (
        value == data and is_packed_state(data)  # decoded when first touched
    )


@settings(max_examples=300, deadline=None)
@given(_payloads)
def test_scores_codec_loads_scores_or_corrupt(data: bytes) -> None:
    value = codecs.loads(SCORES_CODEC, data)
    assert isinstance(value, (UserScores, Corrupt)) or (
        value == data and UserScores.is_packed(data)
    )


@settings(max_examples=300, deadline=None)
@given(_payloads)
def test_clock_codec_loads_an_int_or_corrupt(data: bytes) -> None:
    value = codecs.loads(CLOCK_CODEC, data)
    assert isinstance(value, Corrupt) or (type(value) is int and value >= 0)


def test_codecs_round_trip_and_read_what_json_wrote_for_the_clock() -> None:
    state = UserState("u1")
    # The current format stays bytes in the table (decoded on first touch), and bytes are
    # written as they are.
    packed = codecs.loads(STATE_CODEC, codecs.dumps(STATE_CODEC, state))
    assert packed == encode_state(state) and codecs.dumps(STATE_CODEC, packed) == packed
    assert decode_user(b"u1", packed) == state
    scores = UserScores(latest={"scores.churn": {"p": 0.5}}, last_offer_ts=5)
    packed = codecs.loads(SCORES_CODEC, codecs.dumps(SCORES_CODEC, scores))
    assert packed == scores.to_bytes() and decode_scores(b"u1", packed) == scores
    # Older formats are decoded at recovery, as before.
    old_scores = b'[1, {"scores.churn": {"p": 0.5}}, [], null, null, 5]'
    assert isinstance(codecs.loads(SCORES_CODEC, old_scores), UserScores | Corrupt)
    # Before the clock codec, Faust's JSON codec wrote the int; the same bytes read back.
    assert codecs.loads(CLOCK_CODEC, orjson.dumps(1_767_225_600_000)) == 1_767_225_600_000
    assert codecs.dumps(CLOCK_CODEC, 1_767_225_600_000) == b"1767225600000"
