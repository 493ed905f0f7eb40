"""Bad input at volume: 10,000 hostile payloads mixed into valid traffic.

The worker never crashes, every bad payload lands in ``events.dlq`` with a reason (byte for
byte), the valid events' features equal the offline computation, and memory stays bounded.
"""

from __future__ import annotations

import base64
import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from stream.contract.dlq import MAX_RAW_BYTES
from stream.contract.events import INPUT_TOPICS
from stream.contract.validation import REASONS, decode_event
from stream.errors import Rejected
from stream.settings import Limits
from stream.tools.generator import GeneratorConfig, write_log
from stream.tools.replay import read_log

pytestmark = [pytest.mark.broker, pytest.mark.both_brokers]

BAD = 10_000
NOW = int(time.time() * 1000)
KIND = {"clicks": "click", "carts": "cart", "orders": "order"}


def _event(topic: str, rng: random.Random, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": f"bad-{rng.randrange(1 << 40)}",
        "user_id": f"u{rng.randrange(1000):06d}",
        "ts": NOW - 3_600_000,
        "session_id": "s1",
    }
    if topic in ("clicks", "carts"):
        base.update(item_id="i00001", category="books", price=9.5)
    if topic == "carts":
        base.update(action="add", quantity=1)
    if topic == "orders":
        base.update(order_id="o1", items=[{"item_id": "i00001", "price": 9.5, "quantity": 1}])
    for name, value in changes.items():
        if value is _DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


_DROP = object()


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


# Each maker returns one hostile payload for ``topic``: every family named by the issue.
def _random_bytes(topic: str, rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(1, 400))


def _deep_json(topic: str, rng: random.Random) -> bytes:
    depth = rng.randint(1_100, 20_000)
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth  # past the parser's depth limit
    field = {"clicks": "item_id", "carts": "item_id", "orders": "items"}[topic]
    return orjson.dumps(_event(topic, rng, **{field: _nested(rng.randint(10, 200))}))


def _huge_string(topic: str, rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.5:  # a field far over max_string, payload under max_payload_bytes
        return orjson.dumps(_event(topic, rng, user_id="x" * rng.randint(300, 60_000)))
    if roll < 0.88:  # over max_payload_bytes
        return orjson.dumps(_event(topic, rng, category="y" * rng.randint(70_000, 200_000)))
    # Characters that JSON must escape, up to just under Kafka's default 1 MB message limit:
    # embedded verbatim, the dead-letter record would outgrow the producer's request limit.
    pairs = rng.randint(40_000, 120_000) if roll < 0.98 else 450_000
    return b'{"junk": "' + b'\\"' * pairs + b'"}'


def _wrong_type(topic: str, rng: random.Random) -> bytes:
    changes = rng.choice(
        [
            {"ts": [NOW]},
            {"ts": {"ms": NOW}},
            {"ts": True},
            {"user_id": 1.5},
            {"user_id": ["u1"]},
            {"event_id": {"id": 1}},
            {"user_id": None},
            {"ts": _DROP},
            {"price": "12.50"} if topic != "orders" else {"items": {"item_id": "i"}},
            {"category": 3.25} if topic != "orders" else {"items": [1, 2, 3]},
            {"quantity": True} if topic == "carts" else {"event_id": False},
            {"action": 5} if topic == "carts" else {"user_id": {"nested": True}},
        ]
    )
    return orjson.dumps(_event(topic, rng, **changes))


def _non_finite(topic: str, rng: random.Random) -> bytes:
    token = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
    field = b"price" if topic != "orders" else b"total"
    text = orjson.dumps(_event(topic, rng, **{field.decode(): 1}))
    return text.replace(b'"' + field + b'":1', b'"' + field + b'":' + token, 1)


def _unicode(topic: str, rng: random.Random) -> bytes:
    roll = rng.randrange(8)
    good = orjson.dumps(_event(topic, rng))
    if roll == 0:  # a lone surrogate, as a JSON escape
        return good.replace(b'"i00001"', b'"\\ud800x"', 1).replace(b'"o1"', b'"\\udfff"', 1)
    if roll == 1:  # a surrogate encoded as (invalid) UTF-8
        return good.replace(b'"s1"', b'"\xed\xa0\x80"', 1)
    if roll == 2:  # an overlong encoding of "/"
        return good.replace(b'"s1"', b'"\xc0\xaf"', 1)
    if roll == 3:  # a byte order mark before the object
        return b"\xef\xbb\xbf" + good
    if roll == 4:  # a user id of Unicode spaces only
        return orjson.dumps(_event(topic, rng, user_id="\u2003\u3000\u00a0"))
    if roll == 5:  # an id of emoji and combining marks beyond max_string characters
        return orjson.dumps(_event(topic, rng, event_id="\U0001f525\u0301" * 200))
    if roll == 6:  # NUL and RTL override in an event missing its ts
        return orjson.dumps(_event(topic, rng, user_id="a\u0000\u202eb", ts=_DROP))
    return good.replace(b'"s1"', b'"\xff\xfe"', 1)  # bytes that are never UTF-8


def _bad_timestamp(topic: str, rng: random.Random) -> bytes:
    ts = rng.choice(
        [
            -1,
            0,
            1_700_000_000,  # epoch seconds
            10**16,
            1e308,
            NOW + 400 * 86_400_000,
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "1e12",
            "２０２６-01-01",
            "yesterday",
            "",
        ]
    )
    return orjson.dumps(_event(topic, rng, ts=ts))


MAKERS: list[Callable[[str, random.Random], bytes]] = [
    _random_bytes,
    _deep_json,
    _huge_string,
    _wrong_type,
    _non_finite,
    _unicode,
    _bad_timestamp,
]


def hostile(n: int, seed: int) -> list[tuple[str, bytes | None, bytes]]:
    """``n`` payloads that every cleaning rule set must refuse (checked here, offline)."""
    rng = random.Random(seed)
    out = []
    limits = Limits()
    for i in range(n):
        topic = rng.choice(INPUT_TOPICS)
        payload = MAKERS[i % len(MAKERS)](topic, rng)
        with pytest.raises(Rejected):
            decode_event(KIND[topic], payload, now_ms=NOW, limits=limits)
        key = rng.choice([None, b"", b"u000001", rng.randbytes(8)])
        out.append((topic, key, payload))
    return out


def _raw(value: dict[str, Any]) -> Any:
    """What identifies the payload a DLQ record holds: its bytes, or for one cut at
    ``MAX_RAW_BYTES`` its size and sha256 (after checking the kept part is its prefix)."""
    raw = base64.b64decode(value["raw"]) if value["raw_encoding"] == "base64" else value["raw"]
    raw = raw.encode() if isinstance(raw, str) else raw
    if value.get("raw_truncated"):
        assert len(raw) == MAX_RAW_BYTES
        return ("cut", value["raw_bytes"], value["raw_sha256"], raw)
    return raw


def _identity(payload: bytes) -> Any:
    if len(payload) > MAX_RAW_BYTES:
        digest = hashlib.sha256(payload).hexdigest()
        return ("cut", len(payload), digest, payload[:MAX_RAW_BYTES])
    return payload


def test_ten_thousand_hostile_payloads_are_dead_lettered_and_change_nothing_else(
    settings, start_worker, wait, worker_counts, dump, helpers, produce, rss_mb, settle,
    wait_lag_zero, tmp_path,
) -> None:  # fmt: skip
    log = tmp_path / "log.jsonl"
    write_log(GeneratorConfig(users=150, days=10, seed=23), log)
    expected, _ = helpers.offline_views(log, int(time.time() * 1000))
    valid = [(e.kind, e.key, e.payload, e.ts) for e in read_log(log)]
    topic_of = {"click": "clicks", "cart": "carts", "order": "orders"}
    bad = hostile(BAD, seed=29)

    # Without bad traffic: the first half of the valid events, then the worker's RSS.
    half = len(valid) // 2
    produce(settings, [(topic_of[k], key, p) for k, key, p, _ts in valid[:half]])
    worker = start_worker(settings)
    wait_lag_zero([worker], at_least=half)
    clean_rss = rss_mb(worker)

    # The second half with all 10,000 hostile payloads mixed in at random places.
    rng = random.Random(31)
    mixed: list[tuple[Any, ...]] = [(topic_of[k], key, p, ts) for k, key, p, ts in valid[half:]]
    for item in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), item)
    total = half + produce(settings, mixed)
    wait_lag_zero([worker], at_least=total)
    assert worker.proc is not None and worker.proc.poll() is None, "the worker crashed"
    counts = worker_counts(worker)
    assert counts.consumed == total  # one process, nothing consumed twice
    assert counts.rejected_total == BAD, counts.rejected
    assert set(counts.rejected) <= set(REASONS)

    records = wait(lambda: (r := dump(settings, "events.dlq")) and len(r) >= BAD and r, 120, 1.0)
    assert len(records) == BAD
    assert all(r["value"]["reason"] in REASONS and r["value"]["detail"] for r in records)
    got = Counter((r["value"]["source_topic"], _raw(r["value"])) for r in records)
    assert got == Counter((topic, _identity(payload)) for topic, _key, payload in bad)

    settle([worker.url], expected)
    after_rss = rss_mb(worker)
    print(f"bad input: RSS {clean_rss:.0f} MB clean, {after_rss:.0f} MB after; {counts.rejected}")
    assert after_rss < 2 * clean_rss, (clean_rss, after_rss)
