"""``replay`` and ``dump`` against the real broker, through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from stream.contract.validation import parse_ts
from stream.settings import Settings
from stream.tools.generator import GeneratorConfig, write_log

pytestmark = pytest.mark.broker


def cli(settings: Settings | None, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = settings.env() if settings else {}
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "log.jsonl"
    write_log(GeneratorConfig(users=150, days=10, seed=3, iso_fraction=0.1), path)
    return path


def test_replay_publishes_everything_in_event_time_order_per_user(settings, log, dump) -> None:
    result = cli(settings, "replay", str(log))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert summary["published"] == len(lines) and summary["skipped"] == 0

    expected: dict[str, list[str]] = defaultdict(list)
    for line in sorted(lines, key=lambda d: parse_ts(d["ts"])):
        expected[line["type"] + "s"].append(line["event_id"])
    for topic in ("clicks", "carts", "orders"):
        records = dump(settings, topic)
        assert sorted(r["value"]["event_id"] for r in records) == sorted(expected[topic])
        per_user: dict[tuple[str, int], list[int]] = defaultdict(list)
        for rec in sorted(records, key=lambda r: (r["partition"], r["offset"])):
            assert rec["key"] == rec["value"]["user_id"]  # keyed by user
            assert "type" not in rec["value"]
            per_user[(rec["key"], rec["partition"])].append(parse_ts(rec["value"]["ts"]))
        assert len({user for user, _ in per_user}) == len(per_user)  # one partition per user
        for times in per_user.values():
            assert times == sorted(times)


def test_replay_until_stops_at_t_and_advances_the_clock(settings, log, dump) -> None:
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    times = sorted(parse_ts(d["ts"]) for d in lines)
    until = times[len(times) // 2]
    iso = "2026-01-05T12:00:00Z" if False else None  # epoch ms form tested here; ISO below
    del iso
    result = cli(settings, "replay", str(log), "--until", str(until))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["published"] == sum(t <= until for t in times)
    assert summary["beyond_until"] == sum(t > until for t in times)
    clock = dump(settings, "clock")
    assert sorted(r["partition"] for r in clock) == list(range(settings.partitions))
    assert {r["value"]["ts"] for r in clock} == {until}


def test_until_accepts_iso_and_rejects_nonsense(settings, log) -> None:
    ok = cli(settings, "replay", str(log), "--until", "2026-01-03T00:00:00Z")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["clock_ts"] == parse_ts("2026-01-03T00:00:00Z")
    bad = cli(settings, "replay", str(log), "--until", "someday")
    assert bad.returncode == 2 and "ISO-8601" in bad.stderr


def test_unroutable_lines_are_reported_not_hidden(settings, tmp_path, dump) -> None:
    path = tmp_path / "mixed.jsonl"
    good = {"type": "click", "event_id": "e1", "user_id": "u1", "ts": 1767225600000, "item_id": "i"}
    path.write_bytes(orjson.dumps(good) + b"\nnot json\n" + orjson.dumps({"type": "view"}) + b"\n")
    result = cli(settings, "replay", str(path))
    assert result.returncode == 0
    assert json.loads(result.stdout)["skipped"] == 2
    assert "2 lines are not routable" in result.stderr
    assert len(dump(settings, "clicks")) == 1


def test_dump_latest_per_key_through_the_cli(settings, tmp_path) -> None:
    path = tmp_path / "two.jsonl"
    rows = [
        {
            "type": "click",
            "event_id": f"e{i}",
            "user_id": f"u{i % 3}",
            "ts": 1767225600000 + i,
            "item_id": "i",
        }
        for i in range(9)
    ]
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    assert cli(settings, "replay", str(path)).returncode == 0
    out = tmp_path / "latest.jsonl"
    result = cli(settings, "dump", "clicks", "--latest-per-key", "--out", str(out))
    assert result.returncode == 0, result.stderr
    latest = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert {r["key"]: r["value"]["event_id"] for r in latest} == {
        "u0": "e6",
        "u1": "e7",
        "u2": "e8",
    }
    assert all(set(r) == {"key", "value", "partition", "offset"} for r in latest)
    everything = cli(settings, "dump", "clicks")
    assert len(everything.stdout.splitlines()) == 9


def test_unreachable_broker_is_a_clear_error(tmp_path, log) -> None:
    from stream.tools.broker import free_port

    dead = Settings(broker=f"kafka://127.0.0.1:{free_port()}")
    for args in (("replay", str(log)), ("dump", "clicks")):
        result = cli(dead, *args, timeout=60)
        assert result.returncode == 1
        assert "cannot reach a Kafka broker" in result.stderr
        assert "Traceback" not in result.stderr
