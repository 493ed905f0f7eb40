"""The ingest batch logic without a broker: DLQ records, duplicates, re-keying, per-user state."""

from __future__ import annotations

import orjson

from stream.features import FeatureConfig, UserState, decode_state, describe, encode_state
from stream.pipeline.ingest import RawMessage, ingest_batch
from stream.settings import Limits

NOW = 1_767_225_600_000


def msg(topic: str, obj: object, offset: int = 0, key: bytes | None = b"u1") -> RawMessage:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return RawMessage(topic, 0, offset, key, raw)


def click(event_id: str, user: str = "u1", ts: int = NOW - 10) -> dict:
    return {"event_id": event_id, "user_id": user, "ts": ts, "item_id": "i1"}


def run(messages: list[RawMessage], store: dict[str, UserState] | None = None, **kw):
    store = {} if store is None else store
    return ingest_batch(
        messages, store.get, now_ms=NOW, limits=Limits(), features=FeatureConfig(), **kw
    )


def test_valid_invalid_and_duplicate_events_are_all_accounted_for() -> None:
    messages = [
        msg("clicks", click("e1")),
        msg("clicks", b"garbage", offset=1),
        msg("clicks", click("e1"), offset=2),  # duplicate of e1
        msg(
            "orders",
            {
                "event_id": "e3",
                "user_id": "u1",
                "ts": NOW,
                "order_id": "o",
                "items": [{"item_id": "i", "price": 3}],
            },
            offset=3,
        ),
    ]
    result = run(messages)
    assert result.consumed == {"clicks": 3, "orders": 1}
    assert result.rejected == {("clicks", "not_json"): 1}
    assert result.duplicates == {"clicks": 1}
    assert [e.event_id for e in result.applied] == ["e1", "e3"]
    state = result.states["u1"]
    features = describe(state, None, FeatureConfig())["features"]
    assert (features["clicks_total"], features["orders_total"], features["spend_total"]) == (
        1,
        1,
        3,
    )
    assert state.duplicates == 1
    assert result.touched == {"u1": 3}


def test_dead_letter_keeps_raw_payload_source_and_reason() -> None:
    [(key, record)] = run([msg("carts", b"\xff\x00 not utf8", offset=7)]).dead_letters
    assert key == b"u1"
    assert record["reason"] == "not_json" and record["source_topic"] == "carts"
    assert record["raw_encoding"] == "base64" and record["offset"] == 7


def test_state_from_the_table_is_continued_not_replaced() -> None:
    store = {"u1": UserState("u1")}
    run([msg("clicks", click("e1"))], store)
    result = run([msg("clicks", click("e1")), msg("clicks", click("e2"))], store)
    assert describe(store["u1"], None, FeatureConfig())["features"]["clicks_total"] == 2
    assert result.duplicates == {"clicks": 1}


def test_events_not_keyed_by_user_are_rekeyed_unless_already_in_place() -> None:
    owns = lambda user, partition: user == "u2"  # noqa: E731
    result = run(
        [msg("clicks", click("e1", "u1"), key=None), msg("clicks", click("e2", "u2"), key=b"x")],
        owns=owns,
    )
    assert result.misrouted == [(0, "u1")]
    assert set(result.states) == {"u2"}


def test_state_codec_round_trip() -> None:
    result = run([msg("clicks", click("e1")), msg("clicks", click("e2", ts=NOW - 5))])
    state = result.states["u1"]
    assert decode_state(encode_state(state)) == state


def test_an_unexpected_error_dead_letters_the_event_and_the_batch_goes_on() -> None:
    def broken_store(user_id: str) -> UserState | None:
        if user_id == "u1":
            raise RuntimeError("boom")
        return None

    result = ingest_batch(
        [msg("clicks", click("e1", "u1")), msg("clicks", click("e2", "u2"), offset=1)],
        broken_store,
        now_ms=NOW,
        limits=Limits(),
        features=FeatureConfig(),
    )
    assert result.rejected == {("clicks", "processing_error"): 1}
    assert result.dead_letters[0][1]["detail"].startswith("RuntimeError")
    assert set(result.states) == {"u2"}


def test_events_older_than_the_allowed_lateness_are_dead_lettered_as_late() -> None:
    hour = 3_600_000
    result = run(
        [
            msg("clicks", click("new", ts=NOW - 10)),
            msg("clicks", click("recent", ts=NOW - hour // 2), offset=1),  # within lateness
            msg("clicks", click("old", ts=NOW - 3 * hour), offset=2),
        ]
    )
    assert result.rejected == {("clicks", "late"): 1}
    assert result.dead_letters[0][1]["offset"] == 2
    assert [e.event_id for e in result.applied] == ["new", "recent"]
    assert result.states["u1"].late == 1
