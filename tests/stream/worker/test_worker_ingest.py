"""A real worker against the real broker: events consumed, bad input dead-lettered, no double counts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from offline_train.replay import replay_log
from stream.features import SCHEMA_HASH, FeatureConfig, describe
from stream.settings import Settings
from stream.tools.broker import free_port
from stream.tools.generator import GeneratorConfig, truth_path, write_log

pytestmark = [pytest.mark.broker, pytest.mark.both_brokers]

NOW = int(time.time() * 1000) - 3_600_000


def produce(settings: Settings, messages: list[tuple[str, bytes | None, bytes]]) -> None:
    """Publish (contract topic, key, raw value) in order, then flush."""

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers())
        await producer.start()
        try:
            for topic, key, value in messages:
                await producer.send_and_wait(settings.topic(topic), value=value, key=key)
        finally:
            await producer.stop()

    asyncio.run(send())


def user_view(url: str, user_id: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url}/users/{user_id}", timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def replay_cli(settings: Settings, log, *args: str) -> int:
    """``shopscore replay LOG ARGS`` as a user runs it; returns how many events it published."""
    result = subprocess.run(
        [sys.executable, "-m", "stream", "replay", str(log), *args],
        env=settings.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])["published"]


def ev(kind: str, event_id: str, user: str = "u1", **fields: Any) -> bytes:
    base: dict[str, Any] = {"event_id": event_id, "user_id": user, "ts": NOW}
    if kind in ("click", "cart"):
        base["item_id"] = "i1"
    if kind == "cart":
        base["action"] = "add"
    if kind == "order":
        base.update(order_id="o1", items=[{"item_id": "i1", "price": 12.5, "quantity": 2}])
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not None})


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_valid_events_of_each_kind_are_applied(settings, start_worker, wait, store) -> None:
    worker = start_worker(settings, store=store)
    produce(
        settings,
        [
            ("clicks", b"u1", ev("click", "c1")),
            ("carts", b"u1", ev("cart", "k1")),
            ("carts", b"u1", ev("cart", "k2", action="remove")),
            ("orders", b"u1", ev("order", "o1")),
        ],
    )
    view = wait(lambda: (v := user_view(worker.url, "u1")) and v["features"]["orders_total"] and v)
    features = view["features"]
    assert (features["clicks_total"], features["cart_adds_total"]) == (1, 1)
    assert (features["cart_removes_total"], features["orders_total"]) == (1, 1)
    assert features["spend_total"] == 25.0 and features["spend_24h"] == 25.0
    assert features["has_ordered"] == 1 and features["hours_since_order"] == 0
    assert view["event_time"] == NOW and view["duplicates"] == 0
    assert view["recent_items"] == ["i1", "i1", "i1"]  # click, cart add, order line
    assert view["schema"] == SCHEMA_HASH
    assert user_view(worker.url, "nobody") is None


BAD_CASES: list[tuple[str, bytes, str]] = [
    ("clicks", b"{oops", "not_json"),
    ("clicks", b"\xff\xfe\xfd", "not_json"),
    ("clicks", b'"just a string"', "not_object"),
    ("clicks", ev("click", "b1", item_id=None), "missing_field"),
    ("clicks", ev("click", "b2", ts="last tuesday"), "bad_timestamp"),
    ("clicks", ev("click", "b3", price="cheap"), "bad_type"),
    ("carts", ev("cart", "b4", price=-3), "negative_value"),
    ("carts", ev("cart", "b5", quantity=-1), "negative_value"),
    ("carts", ev("cart", "b6", quantity=10**7), "out_of_bounds"),
    ("carts", ev("cart", "b7", action="explode"), "bad_value"),
    ("orders", ev("order", "b8", items=[{"item_id": "i", "price": 10**9}]), "out_of_bounds"),
    ("orders", ev("order", "b9", items="everything"), "bad_type"),
    ("clicks", ev("click", "b10", ts=NOW + 400 * 86_400_000), "future_timestamp"),
    ("clicks", ev("click", "b11", ts=1_700_000_000), "ts_out_of_range"),
    ("clicks", b'{"x": "' + b"y" * 100_000 + b'"}', "too_large"),
]


def test_every_invalid_case_lands_in_the_dlq_with_its_reason(
    settings, start_worker, wait, dump, worker_counts
) -> None:
    worker = start_worker(settings)
    produce(settings, [(topic, b"u9", raw) for topic, raw, _ in BAD_CASES])
    produce(settings, [("clicks", b"u9", ev("click", "good", user="u9"))])
    records = wait(lambda: (r := dump(settings, "events.dlq")) and len(r) >= len(BAD_CASES) and r)
    assert len(records) == len(BAD_CASES)
    got = sorted((r["value"]["source_topic"], r["value"]["reason"]) for r in records)
    assert got == sorted((topic, reason) for topic, _, reason in BAD_CASES)
    for record in records:
        value = record["value"]
        assert record["key"] == "u9" and value["detail"]
        original = next(
            raw
            for t, raw, r in BAD_CASES
            if r == value["reason"] and t == value["source_topic"] and _raw(value) == raw
        )
        assert original  # the raw payload survives byte for byte
    # The worker kept going: the valid event after the bad ones was applied.
    view = wait(lambda: user_view(worker.url, "u9"))
    assert view["features"]["clicks_total"] == 1
    counts = worker_counts(worker)
    assert sum(counts.rejected.values()) == len(BAD_CASES)
    assert counts.rejected == dict(Counter(reason for _, _, reason in BAD_CASES))


def _raw(value: dict[str, Any]) -> bytes:
    import base64

    if value["raw_encoding"] == "base64":
        return base64.b64decode(value["raw"])
    return value["raw"].encode()


def test_duplicates_are_counted_not_applied(settings, start_worker, wait, worker_counts) -> None:
    worker = start_worker(settings)
    order = ev("order", "dup-order")
    produce(settings, [("orders", b"u1", order)] * 3 + [("clicks", b"u1", ev("click", "c9"))])
    view = wait(lambda: (v := user_view(worker.url, "u1")) and v["features"]["clicks_total"] and v)
    assert view["features"]["orders_total"] == 1
    assert view["features"]["spend_total"] == 25.0
    assert view["duplicates"] == 2
    assert worker_counts(worker).duplicates == 2


def test_events_without_a_user_key_are_rekeyed_to_the_users_partition(
    settings, start_worker, wait, worker_counts
) -> None:
    worker = start_worker(settings)
    produce(settings, [("clicks", None, ev("click", f"n{i}", user="keyless")) for i in range(8)])
    view = wait(
        lambda: (v := user_view(worker.url, "keyless")) and v["features"]["clicks_total"] == 8 and v
    )
    assert view["duplicates"] == 0
    assert worker_counts(worker).consumed >= 8


def offline_views(log_path, now_ms: int) -> tuple[dict[str, dict[str, Any]], Counter[str]]:
    """What ``GET /users/{id}`` should answer for every user, computed offline with the same
    cleaning rules and feature core (``offline_train.replay``), no Kafka involved."""
    config = FeatureConfig()
    replayed = replay_log(log_path, config, now_ms=now_ms)
    views = {uid: describe(state, None, config) for uid, state in replayed.states.items()}
    return views, replayed.outcomes


def view_mismatches(url: str, expected: dict[str, dict[str, Any]], *, redelivery: bool = False):
    """Users whose worker view differs from the offline one. After a restart, redelivered
    events are recognised and counted as duplicates, so only that counter may be higher."""
    out = []
    for user_id, want in expected.items():
        got = user_view(url, user_id)
        if got is None:
            out.append((user_id, None))
            continue
        got = {k: got[k] for k in want}
        if redelivery and got["duplicates"] >= want["duplicates"]:
            got["duplicates"] = want["duplicates"]
        if got != want:
            diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
            out.append((user_id, diff))
    return out


def test_generated_log_replayed_is_fully_accounted_for(
    settings, start_worker, wait, dump, worker_counts, tmp_path
) -> None:
    log = tmp_path / "log.jsonl"
    summary = write_log(
        GeneratorConfig(users=1000, days=30, seed=1, bad_fraction=0.01, duplicate_fraction=0.01),
        log,
    )
    truth = json.loads(truth_path(log).read_text())
    worker = start_worker(settings)
    published = replay_cli(settings, log)
    assert published == summary["events"]

    counts = wait(lambda: (c := worker_counts(worker)) and c.consumed >= published and c, 240)
    assert counts.consumed == published  # nothing lost, nothing consumed twice
    assert counts.applied + counts.rejected_total + counts.duplicates == published
    assert counts.rejected_total == len(truth["invalid"])
    assert counts.duplicates == truth["duplicates"]
    invalid = len(truth["invalid"])
    dlq = wait(lambda: (r := dump(settings, "events.dlq")) and len(r) >= invalid and r)
    assert len(dlq) == invalid

    expected, outcomes = offline_views(log, int(time.time() * 1000))
    assert outcomes["applied"] == counts.applied
    assert outcomes.get("late", 0) == 0
    mismatches = view_mismatches(worker.url, expected)
    assert not mismatches, (len(mismatches), mismatches[:3])


def test_clock_advances_idle_users_features_to_t(
    settings, start_worker, wait, worker_counts, tmp_path
) -> None:
    log = tmp_path / "log.jsonl"
    write_log(GeneratorConfig(users=120, days=10, seed=11), log)
    until = 1_767_225_600_000 + 6 * 86_400_000  # day 6 of the log
    worker = start_worker(settings)
    published = replay_cli(settings, log, "--until", str(until))
    wait(lambda: worker_counts(worker).consumed >= published, 120)

    # Offline: the same log cut at T, every user read at T.
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(
        b"".join(
            line
            for line in log.read_bytes().splitlines(keepends=True)
            if orjson.loads(line)["ts"] <= until
        )
    )
    config = FeatureConfig()
    replayed = replay_log(cut, config, now_ms=int(time.time() * 1000))
    idle = 0
    for user_id, state in replayed.states.items():
        want = describe(state, until, config)
        got = wait(
            lambda uid=user_id: (
                (v := user_view(worker.url, uid)) and v["event_time"] == until and v
            ),
            30,
        )
        assert {k: got[k] for k in want} == want, user_id
        idle += want["features"]["hours_since_click"] > 24
    assert idle > 0  # some users' recency grew to T although they had no event near it


def test_any_worker_answers_for_any_user(
    settings, start_worker, wait, worker_counts, tmp_path
) -> None:
    log = tmp_path / "log.jsonl"
    write_log(GeneratorConfig(users=60, days=5, seed=4), log)
    first = start_worker(settings, name="first")
    second = start_worker(settings, name="second", web_port=free_port())
    # Both members of the group must hold partitions before the replay.
    wait(lambda: all((w.health() or {}).get("status") == "ready" for w in (first, second)), 90)
    published = replay_cli(settings, log)
    wait(lambda: worker_counts(first).consumed + worker_counts(second).consumed >= published, 120)
    expected, _ = offline_views(log, int(time.time() * 1000))
    for user_id in expected:
        views = [wait(lambda w=w, u=user_id: user_view(w.url, u), 30) for w in (first, second)]
        assert views[0] == views[1] and views[0]["features"] == expected[user_id]["features"]
    # The users really are split between the two workers' tables.
    held = wait(
        lambda: (
            (h := [worker_counts(w).users for w in (first, second)])
            and sum(h) == len(expected)
            and h
        ),
        30,
    )
    assert all(n > 0 for n in held), held
