"""Whatever a broker writer sends, the cleaning rules answer ``Rejected`` or a clean event.

Property-based (hypothesis): random bytes, random JSON values, and valid events with one field
replaced by anything, for ``decode_event`` (all three kinds), ``decode_clock`` and
``parse_ts``; plus the cases that escaped before (issue 10): ``"ts": "²"``, a clock of
``1e300`` or in 2100, a computed order total of 2e10, events keyed by user on a partition that
does not own the user.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.contract.events import KIND_OF_TOPIC, Order
from stream.contract.partitioning import owner_partition
from stream.contract.validation import (
    REASONS,
    decode_clock,
    decode_event,
    parse_ts,
    validate_object,
)
from stream.errors import Rejected
from stream.features import FeatureConfig
from stream.pipeline.ingest import BatchResult, RawMessage, clean_message, ingest_batch
from stream.settings import Limits, Settings

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
LIMITS = Limits()
YEAR_2100 = 4_102_444_800_000
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID: dict[str, dict[str, Any]] = {
    "click": {"event_id": "e1", "user_id": "u1", "ts": NOW - 1000, "item_id": "i1"},
    "cart": {
        "event_id": "e1",
        "user_id": "u1",
        "ts": NOW - 1000,
        "item_id": "i1",
        "action": "add",
        "quantity": 2,
        "price": 3.5,
        "category": "books",
    },
    "order": {
        "event_id": "e2",
        "user_id": "u1",
        "ts": NOW - 1000,
        "order_id": "o1",
        "items": [{"item_id": "i1", "price": 10.0, "quantity": 2}, {"item_id": "i2", "price": 5}],
        "total": 25.0,
    },
}

# -- strategies ----------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["²", "١٢٣", "１２３", "9" * 16, " 123 ", "2026-01-01T00:00:00Z", "", "z"]),
)
#: Any JSON value orjson can write (and so a broker writer can send).
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=25,
)
#: Python values beyond JSON's (what ``validate_object`` may get from other callers).
python_values = st.one_of(
    json_values,
    st.integers(),
    st.floats(),
    st.just(10**5000),
    st.just(-(10**400)),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1),
    st.binary(max_size=10),
    st.tuples(st.integers()),
)
timestamps = st.one_of(
    python_values,
    st.integers(min_value=-(10**16), max_value=10**16),
    st.text(alphabet="0123456789-:TZ+. ²", max_size=30),
    st.builds(
        lambda y, rest: f"{y:04d}{rest}",
        st.integers(0, 9999),
        st.sampled_from(["-01-01", "-12-31T23:59:59+23:59", "-01-01T00:00:00-23:59", "-02-30"]),
    ),
)


def _rejected_or(kind_or_clock: str, call: Any) -> Any:
    try:
        return call()
    except Rejected as exc:
        assert exc.reason in REASONS, exc.reason
        return exc


# -- properties ----------------------------------------------------------------------------


@FUZZ
@given(kind=st.sampled_from(list(VALID)), raw=st.binary(max_size=300))
def test_random_bytes_are_rejected_or_decoded(kind: str, raw: bytes) -> None:
    _rejected_or(kind, lambda: decode_event(kind, raw, now_ms=NOW, limits=LIMITS))
    _rejected_or("clock", lambda: decode_clock(raw, now_ms=NOW, limits=LIMITS))


@FUZZ
@given(kind=st.sampled_from(list(VALID)), value=json_values)
def test_random_json_values_are_rejected_or_decoded(kind: str, value: Any) -> None:
    raw = orjson.dumps(value)
    _rejected_or(kind, lambda: decode_event(kind, raw, now_ms=NOW, limits=LIMITS))
    _rejected_or("clock", lambda: decode_clock(raw, now_ms=NOW, limits=LIMITS))
    clock = orjson.dumps({"ts": value, "source": "fuzz"})
    _rejected_or("clock", lambda: decode_clock(clock, now_ms=NOW, limits=LIMITS))


def _mutate(base: dict[str, Any], path: list[str | int], value: Any, drop: bool) -> dict:
    obj = orjson.loads(orjson.dumps(base))
    target: Any = obj
    for step in path[:-1]:
        target = target[step]
    if drop and isinstance(target, dict):
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return obj


def _paths(kind: str) -> list[list[str | int]]:
    base = VALID[kind]
    paths: list[list[str | int]] = [[name] for name in (*base, "session_id", "extra")]
    if kind == "order":
        paths += [["items", i, name] for i in (0, 1) for name in ("item_id", "price", "quantity")]
        paths += [["items", 0, "category"]]
    return paths


@FUZZ
@given(data=st.data(), kind=st.sampled_from(list(VALID)))
def test_valid_events_with_any_field_replaced_are_rejected_or_clean(data: Any, kind: str) -> None:
    path = data.draw(st.sampled_from(_paths(kind)))
    value = data.draw(json_values)
    obj = _mutate(VALID[kind], path, value, drop=data.draw(st.booleans()))
    raw = orjson.dumps(obj)
    out = _rejected_or(kind, lambda: decode_event(kind, raw, now_ms=NOW, limits=LIMITS))
    if isinstance(out, Order):
        assert 0 <= out.total <= LIMITS.max_price * LIMITS.max_items


@FUZZ
@given(data=st.data(), kind=st.sampled_from(list(VALID)))
def test_python_objects_beyond_json_are_rejected_or_clean(data: Any, kind: str) -> None:
    """``validate_object`` (offline replays, tests) gets Python values orjson never makes."""
    path = data.draw(st.sampled_from(_paths(kind)))
    obj = _mutate(VALID[kind], path, None, drop=False)
    target: Any = obj
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = data.draw(python_values)
    _rejected_or(kind, lambda: validate_object(kind, obj, now_ms=NOW, limits=LIMITS))


@FUZZ
@given(value=timestamps)
def test_parse_ts_returns_a_bounded_int_or_rejects(value: Any) -> None:
    out = _rejected_or("ts", lambda: parse_ts(value))
    if not isinstance(out, Rejected):
        assert type(out) is int and abs(out) <= 10**15


@FUZZ
@given(value=timestamps, now=st.integers(LIMITS.min_ts_ms, 10**13))
def test_decode_clock_keeps_the_event_timestamp_bounds(value: Any, now: int) -> None:
    try:
        raw = orjson.dumps({"ts": value})
    except TypeError:  # not JSON (a huge int, a surrogate): a broker writer cannot send it
        return
    out = _rejected_or("clock", lambda: decode_clock(raw, now_ms=now, limits=LIMITS))
    if not isinstance(out, Rejected):
        assert LIMITS.min_ts_ms <= out <= now + LIMITS.max_future_ms


@FUZZ
@given(
    topic=st.sampled_from(list(KIND_OF_TOPIC)),
    value=st.one_of(st.none(), st.binary(max_size=200), json_values.map(orjson.dumps)),
    key=st.one_of(st.none(), st.binary(max_size=50)),
    partition=st.integers(0, 3),
)
def test_clean_message_accounts_for_every_message(
    topic: str, value: bytes | None, key: bytes | None, partition: int
) -> None:
    result = BatchResult()
    msg = RawMessage(topic, partition, 7, key, value)
    owns = lambda user, p: owner_partition(user, 4) == p  # noqa: E731
    event = clean_message(msg, 0, result, now_ms=NOW, limits=LIMITS, owns=owns)
    accounted = (event is not None) + len(result.dead_letters) + len(result.misrouted)
    assert accounted == 1 and result.consumed[topic] == 1


# -- the cases of issue 10 -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["²", "¹²³", "١٧٦٧٢٢٥٦٠٠٠٠٠", "１７６７２２５６０００００", "1\u00b2"]
)
def test_non_ascii_digits_are_a_bad_timestamp_not_a_crash(text: str) -> None:
    assert text.isdigit() or not text.isascii()
    with pytest.raises(Rejected) as info:
        parse_ts(text)
    assert info.value.reason == "bad_timestamp"
    raw = orjson.dumps({**VALID["click"], "ts": text})
    with pytest.raises(Rejected):
        decode_event("click", raw, now_ms=NOW, limits=LIMITS)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (10**5000, "bad_timestamp"),
        (1e300, "bad_timestamp"),
        (math.inf, "bad_timestamp"),
        ("9" * 16, "bad_timestamp"),
        ("2026-02-30", "bad_timestamp"),
        ([NOW], "bad_type"),
    ],
    ids=["huge-int", "1e300", "inf", "16-digits", "feb-30", "list"],
)
def test_timestamp_escapes(value: Any, reason: str) -> None:
    with pytest.raises(Rejected) as info:
        parse_ts(value)
    assert info.value.reason == reason


def test_huge_python_numbers_and_surrogates_are_rejected() -> None:
    cases = [
        ("click", {**VALID["click"], "user_id": 10**5000}, "out_of_bounds"),
        ("click", {**VALID["click"], "price": 10**400}, "out_of_bounds"),
        ("click", {**VALID["click"], "price": -(10**400)}, "negative_value"),
        ("cart", {**VALID["cart"], "quantity": 10**5000}, "out_of_bounds"),
        ("click", {**VALID["click"], "user_id": "u\ud800"}, "bad_value"),
    ]
    for kind, obj, expected in cases:
        with pytest.raises(Rejected) as info:
            validate_object(kind, obj, now_ms=NOW, limits=LIMITS)
        assert info.value.reason == expected, (obj, info.value)


def test_a_computed_total_is_bounded_like_an_explicit_one() -> None:
    lines = [{"item_id": f"i{i}", "price": 100_000, "quantity": 1_000} for i in range(200)]
    order = {**VALID["order"], "items": lines}
    del order["total"]
    with pytest.raises(Rejected) as info:
        decode_event("order", orjson.dumps(order), now_ms=NOW, limits=LIMITS)
    assert info.value.reason == "out_of_bounds" and "computed total" in info.value.detail
    explicit = {**order, "total": 2e10}
    with pytest.raises(Rejected) as info:
        decode_event("order", orjson.dumps(explicit), now_ms=NOW, limits=LIMITS)
    assert info.value.reason == "out_of_bounds"
    # At the bound exactly (max_price x max_items), a computed total is accepted.
    ok = {**order, "items": [{"item_id": "i", "price": 100_000, "quantity": 200}]}
    assert decode_event("order", orjson.dumps(ok), now_ms=NOW, limits=LIMITS).total == 2e7


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"ts": 1e300}', "bad_timestamp"),
        (orjson.dumps({"ts": YEAR_2100}), "future_timestamp"),
        (orjson.dumps({"ts": NOW + LIMITS.max_future_ms + 1}), "future_timestamp"),
        (orjson.dumps({"ts": 1_700_000_000}), "ts_out_of_range"),
        (b'{"ts": "\xc2\xb2"}', "bad_timestamp"),
        (b'{"ts": true}', "bad_type"),
        (b'{"source": "replay"}', "missing_field"),
        (b'{"ts": null}', "missing_field"),
        (b"[1767225600000]", "not_object"),
        (b"1767225600000", "not_object"),
        (b"not json", "not_json"),
        (None, "not_json"),
        (b'{"ts": 1767225600000, "pad": "' + b"x" * 70_000 + b'"}', "too_large"),
    ],
)
def test_clock_messages_keep_the_event_timestamp_rules(raw: bytes | None, reason: str) -> None:
    with pytest.raises(Rejected) as info:
        decode_clock(raw, now_ms=NOW, limits=LIMITS)
    assert info.value.reason == reason


def test_valid_clock_messages() -> None:
    assert decode_clock(b'{"ts": 1767225600000, "source": "replay"}', now_ms=NOW, limits=LIMITS)
    assert decode_clock(b'{"ts": "2026-01-01T00:00:00Z"}', now_ms=NOW, limits=LIMITS) == NOW
    ahead = NOW + LIMITS.max_future_ms
    assert decode_clock(orjson.dumps({"ts": ahead}), now_ms=NOW, limits=LIMITS) == ahead
    # Without a wall clock (offline), only the future check is skipped.
    assert decode_clock(orjson.dumps({"ts": YEAR_2100}), now_ms=None, limits=LIMITS) == YEAR_2100


# -- clean_message: nothing unaccounted for, ownership by partition -------------------------


def _click(user: str, event_id: str = "e1") -> bytes:
    return orjson.dumps({**VALID["click"], "user_id": user, "event_id": event_id})


def test_an_unexpected_error_while_cleaning_is_dead_lettered_as_processing_error() -> None:
    def broken_owns(user: str, partition: int) -> bool:
        raise RuntimeError("a bug")

    result = BatchResult()
    msg = RawMessage("clicks", 2, 9, b"u1", _click("u1"))
    assert clean_message(msg, 0, result, now_ms=NOW, limits=LIMITS, owns=broken_owns) is None
    assert result.rejected == {("clicks", "processing_error"): 1}
    [(key, record)] = result.dead_letters
    assert key == b"u1" and record["detail"].startswith("RuntimeError")
    assert (record["partition"], record["offset"]) == (2, 9)


def test_an_event_keyed_by_its_user_on_a_partition_that_does_not_own_it_is_republished() -> None:
    users = [f"u{i}" for i in range(20)]
    messages = []
    for offset, user in enumerate(users):
        wrong = (owner_partition(user, 4) + 1) % 4
        messages.append(RawMessage("clicks", wrong, offset, user.encode(), _click(user, user)))
    result = ingest_batch(
        messages,
        {}.get,
        now_ms=NOW,
        limits=LIMITS,
        features=FeatureConfig(),
        owns=lambda user, p: owner_partition(user, 4) == p,
    )
    assert [user for _ref, user in result.misrouted] == users
    assert not result.states and not result.applied and not result.dead_letters
    assert result.consumed == {"clicks": 20}
    # On their owner's partition they are applied, whatever their key.
    owned = [
        RawMessage("clicks", owner_partition(u, 4), i, key, _click(u, u))
        for i, (u, key) in enumerate(zip(users, [None, b"x", b"u1"] * 7, strict=False))
    ]
    result = ingest_batch(
        owned,
        {}.get,
        now_ms=NOW,
        limits=LIMITS,
        features=FeatureConfig(),
        owns=lambda user, p: owner_partition(user, 4) == p,
    )
    assert not result.misrouted and len(result.applied) == 20


def test_owner_partition_is_javas_default_partitioner() -> None:
    # Java: Utils.toPositive(Utils.murmur2(key)) % n; aiokafka's DefaultPartitioner agrees.
    from aiokafka.partitioner import DefaultPartitioner

    partitioner = DefaultPartitioner()
    for i in range(200):
        user = f"user-{i}-\u00e9"
        assert owner_partition(user, 4) == partitioner(user.encode(), [0, 1, 2, 3], [0, 1, 2, 3])
        assert owner_partition(user, 7) == partitioner(user.encode(), list(range(7)), [])


# -- replay: the same timestamp rules, no traceback ----------------------------------------


def test_replay_keeps_a_line_with_an_unparseable_ts_in_place(tmp_path: Any) -> None:
    from stream.tools.replay import ReplaySummary, read_log

    path = tmp_path / "log.jsonl"
    rows = [
        {"type": "click", **orjson.loads(_click("u1", "a")), "ts": NOW - 2000},
        {"type": "click", **orjson.loads(_click("u1", "b")), "ts": "²"},
        {"type": "click", **orjson.loads(_click("u1", "c")), "ts": 1e300},
        {"type": "click", **orjson.loads(_click("u1", "d")), "ts": NOW - 1000},
    ]
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    summary = ReplaySummary()
    events = read_log(path, summary)
    # Published where they were, for the worker to dead-letter (and count) them.
    assert [orjson.loads(e.payload)["event_id"] for e in events] == ["a", "b", "c", "d"]
    assert [e.ts for e in events] == [NOW - 2000] * 3 + [NOW - 1000]
    assert summary.skipped == 0


def test_replay_refuses_a_clock_the_workers_would_refuse(tmp_path: Any) -> None:
    import subprocess
    import sys

    from stream.errors import ConfigError
    from stream.tools.broker import free_port
    from stream.tools.replay import check_clock_time

    settings_ = Settings(broker=f"kafka://127.0.0.1:{free_port()}")
    check_clock_time(settings_, NOW, now_ms=NOW)
    check_clock_time(settings_, NOW + LIMITS.max_future_ms, now_ms=NOW)
    for bad in (NOW + LIMITS.max_future_ms + 1, YEAR_2100, 1_700_000_000):
        with pytest.raises(ConfigError):
            check_clock_time(settings_, bad, now_ms=NOW)
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"type": "click", "event_id": "e", "user_id": "u", "ts": 1, "item_id": "i"}')
    result = subprocess.run(
        [sys.executable, "-m", "stream", "replay", str(path), "--until", "2100-01-01T00:00:00Z"],
        env={"PATH": "/usr/bin:/bin", **settings_.env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "future_timestamp" in line and "SHOPSCORE_MAX_FUTURE" in line
