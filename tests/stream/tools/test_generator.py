"""Tests of the synthetic log generator: contract, determinism, realism and dirt bookkeeping."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from stream.tools.generator import (
    CATEGORIES,
    DEFAULT_START,
    DEFAULT_START_MS,
    DEFECTS,
    GeneratorConfig,
    generate_events,
    truth_path,
    write_log,
)

SMALL = GeneratorConfig(users=200, days=14, seed=7)
DIRTY = GeneratorConfig(
    users=200, days=14, seed=7, bad_fraction=0.05, duplicate_fraction=0.03, iso_fraction=0.1
)
POPULATION = GeneratorConfig(users=1500, days=21, seed=11)

Log = tuple[list[dict[str, Any]], dict[str, Any]]


@pytest.fixture(scope="module")
def small() -> Log:
    return generate_events(SMALL)


@pytest.fixture(scope="module")
def dirty() -> Log:
    return generate_events(DIRTY)


@pytest.fixture(scope="module")
def population() -> Log:
    return generate_events(POPULATION)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _price_ok(value: Any) -> bool:
    return isinstance(value, float) and 0 < value < 100_000 and round(value, 2) == value


def _quantity_ok(value: Any) -> bool:
    return _is_int(value) and 1 <= value <= 1_000


def contract_errors(ev: dict[str, Any], cfg: GeneratorConfig) -> list[str]:
    """Everything wrong with one event under the written contract (strict: ts is epoch ms)."""
    errors = []
    kind = ev.get("type")
    required = {
        "click": ("item_id", "category", "price", "session_id"),
        "cart": ("item_id", "action", "category", "price", "quantity", "session_id"),
        "order": ("order_id", "items", "total", "session_id"),
    }
    if kind not in required:
        return [f"type {kind!r}"]
    for name in ("event_id", "user_id", "ts", *required[kind]):
        if name not in ev:
            errors.append(f"missing {name}")
    if errors:
        return errors
    if not isinstance(ev["event_id"], str) or not re.fullmatch(r"u\d{6}", ev["user_id"]):
        errors.append("ids")
    if not _is_int(ev["ts"]) or not cfg.start_ms <= ev["ts"] < cfg.end_ms:
        errors.append(f"ts {ev['ts']!r}")
    if not isinstance(ev["session_id"], str):
        errors.append("session_id")
    if kind in ("click", "cart"):
        if ev["category"] not in CATEGORIES or not isinstance(ev["item_id"], str):
            errors.append("item")
        if not _price_ok(ev["price"]):
            errors.append(f"price {ev['price']!r}")
    if kind == "cart":
        if ev["action"] not in ("add", "remove"):
            errors.append(f"action {ev['action']!r}")
        if not _quantity_ok(ev["quantity"]):
            errors.append(f"quantity {ev['quantity']!r}")
    if kind == "order":
        items = ev["items"]
        if not isinstance(items, list) or not items:
            return [*errors, "items"]
        for item in items:
            if set(item) != {"item_id", "price", "quantity", "category"}:
                errors.append("item keys")
            elif not _price_ok(item["price"]) or not _quantity_ok(item["quantity"]):
                errors.append(f"item {item}")
            elif item["category"] not in CATEGORIES:
                errors.append("item category")
        if not errors:
            total = round(sum(item["price"] * item["quantity"] for item in items), 2)
            if not isinstance(ev["total"], float) or ev["total"] != total:
                errors.append(f"total {ev['total']!r} != {total}")
    return errors


def _iso_to_ms(text: str) -> int:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# --------------------------------------------------------------------------------------------


def test_default_start_and_truth_path(tmp_path: Path) -> None:
    assert DEFAULT_START_MS == 1_767_225_600_000 == _iso_to_ms(DEFAULT_START[:-1] + ".000Z")
    assert GeneratorConfig().start_ms == DEFAULT_START_MS
    assert truth_path(tmp_path / "log.jsonl") == tmp_path / "log.truth.json"
    assert truth_path("a/b.c.jsonl") == Path("a/b.c.truth.json")


@pytest.mark.parametrize(
    "kwargs",
    [{"users": -1}, {"days": 0}, {"seed": -3}, {"bad_fraction": 1.5}, {"change_day": -1.0}],
)
def test_config_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        GeneratorConfig(**kwargs)


def test_write_log_is_deterministic(tmp_path: Path) -> None:
    cfg = GeneratorConfig(users=120, days=10, seed=5, bad_fraction=0.02, duplicate_fraction=0.02,
                          iso_fraction=0.05, change_day=5)  # fmt: skip
    calls: list[tuple[int, int]] = []
    first = write_log(cfg, tmp_path / "a" / "log.jsonl", progress=lambda d, t: calls.append((d, t)))
    second = write_log(cfg, tmp_path / "b" / "log.jsonl")
    other = write_log(GeneratorConfig(users=120, days=10, seed=6), tmp_path / "c" / "log.jsonl")
    log_a, log_b = Path(first["log"]).read_bytes(), Path(second["log"]).read_bytes()
    assert log_a == log_b
    assert Path(first["truth"]).read_bytes() == Path(second["truth"]).read_bytes()
    assert Path(other["log"]).read_bytes() != log_a
    assert calls and calls[-1] == (120, 120)

    events, truth = generate_events(cfg)
    assert log_a == b"".join(orjson.dumps(ev) + b"\n" for ev in events)
    assert orjson.loads(Path(first["truth"]).read_bytes()) == truth
    assert first["events"] == len(events) == log_a.count(b"\n")
    assert first["valid_events"] == truth["valid_events"]
    assert first["invalid_events"] == len(truth["invalid"])
    assert first["duplicates"] == truth["duplicates"]
    assert (first["users"], first["start_ms"]) == (120, DEFAULT_START_MS)
    assert first["end_ms"] == DEFAULT_START_MS + 10 * 86_400_000
    assert first["truth"] == str(truth_path(first["log"]))


def test_write_log_merges_blocks_like_generate_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large logs are sorted in runs and merged; the bytes must not depend on the block size."""
    import stream.tools.generator.log as generator_log

    cfg = GeneratorConfig(users=90, days=7, seed=3, duplicate_fraction=0.05, bad_fraction=0.02)
    monkeypatch.setattr(generator_log, "_BLOCK_USERS", 25)
    calls: list[tuple[int, int]] = []
    summary = write_log(cfg, tmp_path / "log.jsonl", progress=lambda d, t: calls.append((d, t)))
    events, _ = generate_events(cfg)
    assert Path(summary["log"]).read_bytes() == b"".join(orjson.dumps(e) + b"\n" for e in events)
    assert calls == [(25, 90), (50, 90), (75, 90), (90, 90)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "log.truth.json"]


def test_valid_events_follow_the_contract(small: Log) -> None:
    events, truth = small
    assert len(events) == truth["valid_events"] > 0
    for ev in events:
        assert contract_errors(ev, SMALL) == [], ev
    ids = [ev["event_id"] for ev in events]
    assert len(set(ids)) == len(ids)
    keys = [(ev["ts"], ev["event_id"]) for ev in events]
    assert keys == sorted(keys)
    assert Counter(ev["type"] for ev in events).keys() == {"click", "cart", "order"}
    assert len({ev["order_id"] for ev in events if ev["type"] == "order"}) == sum(
        u["orders"] for u in truth["users"].values()
    )
    assert set(truth["users"]) == {f"u{i:06d}" for i in range(SMALL.users)}
    assert truth["catalogue"]["categories"] == list(CATEGORIES)
    assert 12 * 50 <= truth["catalogue"]["items"] <= 12 * 300


def test_sessions_and_truth_agree_with_the_log(small: Log) -> None:
    events, truth = small
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        by_user[ev["user_id"]].append(ev)
    for uid, info in truth["users"].items():
        mine = by_user.get(uid, [])
        assert info["events"] == len(mine)
        orders = [ev for ev in mine if ev["type"] == "order"]
        assert info["orders"] == len(orders)
        assert info["spend"] == pytest.approx(sum(o["total"] for o in orders), abs=0.01)
        assert all(ev["ts"] >= info["start_ts"] for ev in mine)
        # A session is one user's burst: its events are minutes apart, not days.
        sessions: dict[str, list[int]] = defaultdict(list)
        for ev in mine:
            sessions[ev["session_id"]].append(ev["ts"])
        for stamps in sessions.values():
            assert max(stamps) - min(stamps) < 6 * 3_600_000


def test_volume_per_user_in_target_range(population: Log) -> None:
    events, _ = population
    per_user_30d = len(events) / POPULATION.users * 30 / POPULATION.days
    assert 40 <= per_user_30d <= 100
    kinds = Counter(ev["type"] for ev in events)
    assert kinds["click"] > kinds["cart"] > kinds["order"] > 0


def test_no_orders_after_churn_and_plausible_churn_rate(population: Log) -> None:
    events, truth = population
    users = truth["users"]
    for ev in events:
        churn = users[ev["user_id"]]["churn_ts"]
        if churn is not None and ev["type"] == "order":
            assert ev["ts"] < churn
    churned = [u for u in users.values() if u["churn_ts"] is not None]
    assert 0.10 <= len(churned) / len(users) <= 0.70
    assert all(truth["start_ms"] <= u["churn_ts"] < truth["end_ms"] for u in churned)
    # Activity fades: churners are quieter in their last week than in the week before, and
    # only a few ghost clicks follow the churn.
    week = 7 * 86_400_000
    windows: Counter[str] = Counter()
    for ev in events:
        user = users[ev["user_id"]]
        churn = user["churn_ts"]
        if churn is None or churn - 2 * week < user["start_ts"]:
            continue
        lag = churn - ev["ts"]
        windows["after" if lag <= 0 else "last" if lag <= week else "before" if lag <= 2 * week
                else "older"] += 1  # fmt: skip
        assert lag > 0 or ev["type"] == "click"
    assert windows["last"] < 0.75 * windows["before"]
    assert windows["after"] < 0.2 * windows["before"]


def _churn_by_activity_quartile(truth: dict[str, Any]) -> tuple[float, float]:
    users = list(truth["users"].values())
    activity = np.array([u["activity_per_week"] for u in users])
    churned = np.array([u["churn_ts"] is not None for u in users])
    low, high = np.quantile(activity, [0.25, 0.75])
    return float(churned[activity <= low].mean()), float(churned[activity >= high].mean())


def test_churn_depends_on_behaviour(population: Log) -> None:
    _, truth = population
    bottom, top = _churn_by_activity_quartile(truth)
    assert top < 0.5 * bottom
    users = list(truth["users"].values())
    spend = np.array([u["spend_level"] for u in users])
    churned = np.array([u["churn_ts"] is not None for u in users])
    assert churned[spend >= np.median(spend)].mean() < churned[spend < np.median(spend)].mean()


def test_planted_change_flips_the_churn_driver() -> None:
    cfg = GeneratorConfig(users=1000, days=14, seed=11, change_day=0.0)
    _, truth = generate_events(cfg)
    assert truth["change_day"] == 0.0 and truth["change_ts"] == cfg.start_ms
    bottom, top = _churn_by_activity_quartile(truth)
    assert top > 1.5 * bottom


def test_interests_drift(population: Log) -> None:
    _, truth = population
    moved = 0
    for info in truth["users"].values():
        start, end = info["interests_start"], info["interests_end"]
        assert list(start) == list(end) == list(CATEGORIES)
        assert sum(start.values()) == pytest.approx(1, abs=1e-3)
        assert sum(end.values()) == pytest.approx(1, abs=1e-3)
        moved += sum(abs(start[c] - end[c]) for c in CATEGORIES) > 0.1
    assert moved > 0.4 * len(truth["users"])


def test_dirt_is_counted_and_listed(dirty: Log, small: Log) -> None:
    events, truth = dirty
    valid = truth["valid_events"]
    invalid = {entry["event_id"]: entry["defect"] for entry in truth["invalid"]}
    assert len(invalid) == len(truth["invalid"])
    assert 0.035 * valid < len(invalid) < 0.065 * valid
    assert set(invalid.values()) == set(DEFECTS)
    assert 0.02 * valid < truth["duplicates"] < 0.04 * valid
    assert len(events) == valid + len(invalid) + truth["duplicates"]

    counts = Counter(ev.get("event_id") for ev in events)
    assert all(counts[eid] == 1 for eid in invalid)
    repeated = [eid for eid, n in counts.items() if n > 1]
    assert len(repeated) == truth["duplicates"] and max(counts.values()) == 2

    first: dict[str, tuple[int, dict[str, Any]]] = {}
    clean: list[dict[str, Any]] = []
    iso = 0
    for pos, ev in enumerate(events):
        eid = ev["event_id"]
        if eid in invalid:
            assert contract_errors(ev, DIRTY), f"{invalid[eid]} event passes the contract: {ev}"
            continue
        if eid in first:
            before, original = first[eid]
            assert ev == original and ev is not original and pos > before
            continue
        first[eid] = (pos, ev)
        if isinstance(ev["ts"], str):
            iso += 1
            ev = {**ev, "ts": _iso_to_ms(ev["ts"])}
        assert contract_errors(ev, DIRTY) == []
        clean.append(ev)
    assert iso == truth["iso_timestamps"]
    assert 0.08 * valid < iso < 0.12 * valid
    # Dirt comes from separate random streams: the valid events are those of the clean log.
    assert clean == small[0]
    assert truth["users"] == small[1]["users"]


def test_invalid_events_are_rejected_by_the_validator(dirty: Log) -> None:
    """Cross-check with the service's own cleaning rules, when they are importable."""
    validation = pytest.importorskip("stream.contract.validation")
    settings = pytest.importorskip("stream.settings")
    errors = pytest.importorskip("stream.errors")
    events, truth = dirty
    invalid = {entry["event_id"] for entry in truth["invalid"]}
    limits = settings.Limits()
    for ev in events:
        kind = ev["type"]
        if ev["event_id"] in invalid:
            with pytest.raises(errors.Rejected):
                validation.validate_object(kind, ev, now_ms=DIRTY.end_ms, limits=limits)
        else:
            validation.validate_object(kind, ev, now_ms=DIRTY.end_ms, limits=limits)
