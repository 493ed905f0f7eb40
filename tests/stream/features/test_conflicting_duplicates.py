"""A reused event_id with other content is a conflict, not a redelivery: refused, the state left
as it was, and dead-lettered as ``conflicting_duplicate`` (issue: it used to be silently counted
as a duplicate, so anyone could make a shop's real event look applied twice, or hide one)."""

from __future__ import annotations

import orjson

from stream.contract.events import CartChange, Click
from stream.contract.validation import REASONS
from stream.features import FeatureConfig, Outcome, UserState, apply_event, encode_state
from stream.features.codec import decode_state
from stream.features.state import fingerprint
from stream.pipeline.ingest import RawMessage, ingest_batch
from stream.settings import Limits

NOW = 1_767_225_600_000
CONFIG = FeatureConfig()


def test_the_same_event_again_is_a_duplicate_other_content_a_conflict() -> None:
    state = UserState("u1")
    first = Click("e1", "u1", NOW, "i1", "books", 9.5)
    assert apply_event(state, first, CONFIG) is Outcome.APPLIED
    before = encode_state(state)
    for other in (
        Click("e1", "u1", NOW, "i2", "books", 9.5),  # another item
        Click("e1", "u1", NOW, "i1", "books", 95.0),  # another price
        Click("e1", "u1", NOW - 1, "i1", "books", 9.5),  # another time
        Click("e1", "u1", NOW, "i1", "toys", 9.5, "s2"),
    ):
        assert apply_event(state, other, CONFIG) is Outcome.CONFLICT
    assert encode_state(state) == before  # nothing applied, nothing counted
    assert apply_event(state, first, CONFIG) is Outcome.DUPLICATE
    assert state.duplicates == 1


def test_ids_are_per_kind_and_conflicts_survive_the_changelog() -> None:
    state = UserState("u1")
    apply_event(state, Click("e1", "u1", NOW, "i1"), CONFIG)
    # The same id on another topic is another event (ids are remembered per kind).
    assert apply_event(state, CartChange("e1", "u1", NOW, "i1", "add"), CONFIG) is Outcome.APPLIED
    restored = decode_state(encode_state(state))
    assert apply_event(restored, Click("e1", "u1", NOW, "i9"), CONFIG) is Outcome.CONFLICT
    assert apply_event(restored, Click("e1", "u1", NOW, "i1"), CONFIG) is Outcome.DUPLICATE


def test_the_fingerprint_is_a_32_bit_crc_of_the_wire_form() -> None:
    a = Click("e1", "u1", NOW, "i1")
    assert 0 <= fingerprint(a) < 2**32
    assert fingerprint(a) == fingerprint(Click("e1", "u1", NOW, "i1"))
    assert fingerprint(a) != fingerprint(Click("e1", "u1", NOW, "i1", price=1.0))


def test_pruned_ids_keep_their_fingerprints() -> None:
    config = FeatureConfig(dedup_max_ids=4)
    state = UserState("u1")
    events = [Click(f"e{i}", "u1", NOW + i, "i1") for i in range(6)]
    for e in events:
        apply_event(state, e, config)
    assert state.remembered_count("click") <= 4
    kept = [e for e in events if state.remembered("click", e.event_id) is not None]
    assert kept and all(
        state.remembered("click", e.event_id) == (e.ts, fingerprint(e)) for e in kept
    )


def _msg(obj: dict, offset: int) -> RawMessage:
    return RawMessage("clicks", 0, offset, b"u1", orjson.dumps(obj))


def test_ingest_dead_letters_a_conflicting_duplicate_and_counts_it() -> None:
    assert "conflicting_duplicate" in REASONS
    click = {"event_id": "e1", "user_id": "u1", "ts": NOW - 10, "item_id": "i1"}
    messages = [
        _msg(click, 0),
        _msg(click, 1),  # a redelivery
        _msg({**click, "item_id": "i2"}, 2),  # the id reused for another event
    ]
    result = ingest_batch(messages, {}.get, now_ms=NOW, limits=Limits(), features=CONFIG)
    assert [e.event_id for e in result.applied] == ["e1"]
    assert result.duplicates == {"clicks": 1}
    assert result.rejected == {("clicks", "conflicting_duplicate"): 1}
    ((_key, record),) = result.dead_letters
    assert record["reason"] == "conflicting_duplicate"
    assert record["offset"] == 2
    assert orjson.loads(record["raw"])["item_id"] == "i2"
    assert result.states["u1"].duplicates == 1
