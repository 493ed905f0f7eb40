"""Every dead-letter message fits the producer's limit, key included, whatever the input.

Issue 10, case 2: a ``clicks`` message with a 1,000,000-byte key and a non-JSON value made a
DLQ record the producer refused (``MessageSizeTooLargeError``), the worker crashed and the
message was lost. ``dlq_message`` builds the bytes sent and bounds them.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.contract.dlq import (
    MAX_DLQ_MESSAGE_BYTES,
    MAX_KEY_BYTES,
    MAX_RAW_BYTES,
    MAX_TEXT_CHARS,
    bound_key,
    dlq_message,
    dlq_record,
)
from stream.features import FeatureConfig
from stream.pipeline.ingest import RawMessage, ingest_batch
from stream.settings import Limits

#: Faust's producer_max_request_size: what a DLQ message must stay under (with overhead).
PRODUCER_LIMIT = 1_000_000
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)


def _decode(text: str | None, encoding: str) -> bytes | None:
    if encoding == "none":
        return None
    return base64.b64decode(text) if encoding == "base64" else text.encode()  # type: ignore[union-attr]


def _record(raw: bytes | None, key: bytes | None = None, detail: str = "d") -> dict[str, Any]:
    return dlq_record(
        raw=raw,
        source_topic="clicks",
        reason="not_json",
        detail=detail,
        partition=3,
        offset=17,
        rejected_at_ms=1,
        key=key,
    )


def test_the_bound_is_well_under_the_producer_limit() -> None:
    assert MAX_DLQ_MESSAGE_BYTES <= PRODUCER_LIMIT // 3


def test_a_megabyte_key_is_cut_and_described() -> None:
    key = b"k" * 1_000_000
    record = _record(b"not json", key=key)
    assert record["key_truncated"] is True
    assert record["key_bytes"] == 1_000_000
    assert record["key_sha256"] == hashlib.sha256(key).hexdigest()
    assert record["key"] == "k" * MAX_KEY_BYTES and record["key_encoding"] == "utf-8"
    out_key, value = dlq_message(key, record)
    assert out_key == key[:MAX_KEY_BYTES]
    assert len(out_key) + len(value) <= MAX_DLQ_MESSAGE_BYTES
    assert orjson.loads(value) == record


def test_a_small_key_is_kept_whole_in_the_record() -> None:
    record = _record(b"x", key=b"u1")
    assert (record["key"], record["key_encoding"]) == ("u1", "utf-8")
    assert "key_truncated" not in record
    binary = _record(b"x", key=b"\xff\x00")
    assert binary["key_encoding"] == "base64" and _decode(binary["key"], "base64") == b"\xff\x00"
    none = _record(b"x", key=None)
    assert (none["key"], none["key_encoding"]) == (None, "none")


def test_escaping_cannot_blow_up_the_payload() -> None:
    # Control characters escape sixfold in JSON (\u0001): kept as base64 instead.
    raw = b"\x01" * 1_000_000
    record = _record(raw, key=b"\x02" * 1_000_000, detail="\x03" * 10_000)
    assert record["raw_encoding"] == "base64" and record["key_encoding"] == "base64"
    assert _decode(record["raw"], "base64") == raw[:MAX_RAW_BYTES]
    assert record["raw_truncated"] and record["raw_bytes"] == len(raw)
    assert len(record["detail"]) <= MAX_TEXT_CHARS + 1
    out_key, value = dlq_message(b"\x02" * 1_000_000, record)
    assert len(out_key or b"") + len(value) <= MAX_DLQ_MESSAGE_BYTES
    # Quotes double: normal JSON payloads stay readable text.
    quoted = b'{"a": "b"}' * 10
    assert _record(quoted)["raw_encoding"] == "utf-8"


def test_the_worst_text_payload_still_fits() -> None:
    raw = b"\\" * (2 * MAX_RAW_BYTES)  # doubles when escaped, the most text may grow
    key = b'"' * (2 * MAX_KEY_BYTES)
    detail = "\x1f" * (2 * MAX_TEXT_CHARS)  # detail escapes sixfold, bounded by its length
    record = _record(raw, key=key, detail=detail)
    assert record["raw_encoding"] == "utf-8" and record["key_encoding"] == "utf-8"
    out_key, value = dlq_message(key, record)
    assert len(out_key or b"") + len(value) <= MAX_DLQ_MESSAGE_BYTES


def test_a_record_that_does_not_fit_is_cut_rather_than_unsendable() -> None:
    foreign = {"reason": "bad", "source_topic": "clicks", "raw": "x" * 2_000_000, "n": 10**30}
    out_key, value = dlq_message(b"k" * 5000, foreign)
    assert len(out_key or b"") + len(value) <= MAX_DLQ_MESSAGE_BYTES
    decoded = orjson.loads(value)
    assert decoded["raw_omitted"] is True and decoded["reason"] == "bad"
    many = {f"f{i}": "\x01" * 5000 for i in range(500)}
    out_key, value = dlq_message(None, {"reason": "bad", **many})
    assert out_key is None and len(value) <= MAX_DLQ_MESSAGE_BYTES
    assert orjson.loads(value)["reason"] == "bad"
    unserializable = {"reason": "bad", "detail": "\ud800", "obj": object()}
    _key, value = dlq_message(None, unserializable)
    assert orjson.loads(value)["reason"] == "bad"


def test_ingest_dead_letters_carry_a_bounded_key() -> None:
    key = b"K" * 1_000_000
    result = ingest_batch(
        [RawMessage("clicks", 0, 5, key, b"\x00 not json")],
        {}.get,
        now_ms=1_767_225_600_000,
        limits=Limits(),
        features=FeatureConfig(),
    )
    [(out_key, record)] = result.dead_letters
    assert out_key == key[:MAX_KEY_BYTES] and record["key_bytes"] == len(key)
    assert record["reason"] == "not_json" and record["offset"] == 5
    sent_key, value = dlq_message(out_key, record)
    assert len(sent_key or b"") + len(value) <= MAX_DLQ_MESSAGE_BYTES


def test_bound_key() -> None:
    assert bound_key(None) is None
    assert bound_key(b"") == b""
    assert bound_key(bytearray(b"abc")) == b"abc"


_sizes = st.sampled_from([0, 1, 100, MAX_KEY_BYTES, MAX_KEY_BYTES + 1, 70_000, 300_000, 1_100_000])


@st.composite
def _payloads(draw: Any) -> bytes:
    """Big and small, text and binary, escape-heavy or not: built from a repeated chunk so a
    megabyte costs hypothesis nothing."""
    chunk = draw(
        st.one_of(
            st.binary(min_size=1, max_size=16),
            st.text(min_size=1, max_size=8).map(lambda t: t.encode("utf-8", "surrogatepass")),
            st.sampled_from([b"\x00", b'"', b"\\", b"\x1f\x7f", "é€😀".encode()]),
        )
    )
    size = draw(_sizes)
    return (chunk * (size // len(chunk) + 1))[:size]


@FUZZ
@given(
    raw=st.one_of(st.none(), _payloads()),
    key=st.one_of(st.none(), _payloads()),
    detail=st.text(max_size=50).map(lambda t: t * 100),
    reason=st.text(max_size=40),
)
def test_no_dlq_message_is_ever_over_the_bound(
    raw: bytes | None, key: bytes | None, detail: str, reason: str
) -> None:
    record = dlq_record(
        raw=raw,
        source_topic="clicks",
        reason=reason,
        detail=detail,
        partition=0,
        offset=2**63 - 1,
        rejected_at_ms=0,
        key=key,
    )
    out_key, value = dlq_message(key, record)
    assert len(out_key or b"") + len(value) <= MAX_DLQ_MESSAGE_BYTES
    assert out_key == (None if key is None else key[:MAX_KEY_BYTES])
    decoded = orjson.loads(value)
    if "raw_omitted" not in decoded:
        # The kept payload is its prefix, and a cut one says its full size and digest.
        kept = _decode(decoded["raw"], decoded["raw_encoding"])
        assert kept == (None if raw is None else raw[:MAX_RAW_BYTES])
        if raw is not None and len(raw) > MAX_RAW_BYTES:
            assert decoded["raw_bytes"] == len(raw)
            assert decoded["raw_sha256"] == hashlib.sha256(raw).hexdigest()
        kept_key = _decode(decoded["key"], decoded["key_encoding"])
        assert kept_key == (None if key is None else key[:MAX_KEY_BYTES])


@FUZZ
@given(
    record=st.dictionaries(
        st.text(max_size=20),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
            max_leaves=10,
        ),
        max_size=10,
    ),
    key=st.one_of(st.none(), _payloads()),
    blow_up=st.sampled_from([0, 1, 500_000]),
)
def test_any_record_builds_a_bounded_message(record: dict, key: bytes | None, blow_up: int) -> None:
    record = {**record, "raw": "\x01" * blow_up}
    out_key, value = dlq_message(key, record)
    assert len(out_key or b"") + len(value) <= MAX_DLQ_MESSAGE_BYTES
    orjson.loads(value)
