"""Scoring in a real worker against the real broker: outputs, clock, hot model swap."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from stream.kafka.admin import OUTPUT_TOPICS
from stream.models.registry import MODEL_NAMES, shipped_dir
from stream.scoring.contracts import problems
from stream.tools.generator import GeneratorConfig, write_log

pytestmark = [pytest.mark.broker, pytest.mark.both_brokers]


def _helpers():
    spec = importlib.util.spec_from_file_location(
        "worker_ingest", Path(__file__).with_name("test_worker_ingest.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _helpers()


def _log_events(log: Path) -> list[dict]:
    return [orjson.loads(line) for line in log.read_bytes().splitlines() if line.strip()]


def _copy_models(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    source = shipped_dir()
    for name in MODEL_NAMES:
        for suffix in (".onnx", ".json"):
            (target / f"{name}{suffix}").write_bytes((source / f"{name}{suffix}").read_bytes())
    return target


def _retag(directory: Path, version: str, **changes: str) -> None:
    """Give every manifest in ``directory`` a new version (and other changed fields)."""
    for name in MODEL_NAMES:
        path = directory / f"{name}.json"
        manifest = json.loads(path.read_text())
        manifest.update(version=version, **changes)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest))
        tmp.replace(path)


def test_every_applied_event_is_scored_and_outputs_follow_their_contracts(
    settings, start_worker, wait, dump, worker_counts, tmp_path
) -> None:
    log = tmp_path / "log.jsonl"
    write_log(GeneratorConfig(users=150, days=20, seed=21), log)
    events = _log_events(log)
    worker = start_worker(settings)
    published = helpers.replay_cli(settings, log)
    wait(lambda: worker_counts(worker).consumed >= published, 180)
    counts = wait(lambda: (c := worker_counts(worker)) and c.applied == published and c, 60)
    assert counts.rejected_total == 0

    outputs = {t: dump(settings, t) for t in OUTPUT_TOPICS}
    for topic, records in outputs.items():
        for record in records:
            assert problems(topic, record["value"]) == [], (topic, record["value"])
            assert record["key"] == record["value"]["user_id"]

    # Every user's churn, interest and purchase-power scores end at their last event: each
    # batch scores the users it touched, with their newest event as the trigger.
    last: dict[str, dict] = {}
    for event in events:
        user = event["user_id"]
        if user not in last or (event["ts"], event["event_id"]) >= (
            last[user]["ts"],
            last[user]["event_id"],
        ):
            last[user] = event
    for topic in ("scores.churn", "scores.interest", "scores.purchase_power"):
        latest = {r["key"]: r["value"] for r in dump(settings, topic, latest_per_key=True)}
        assert set(latest) == set(last), topic
        for user, event in last.items():
            if topic == "scores.churn" and latest[user]["trigger"] == "clock":
                # re-scored at a later stream-time tick while idle
                assert latest[user]["ts"] > event["ts"], user
            else:
                assert latest[user]["ts"] == event["ts"], (topic, user)
                assert latest[user]["trigger"] == event["event_id"], (topic, user)
    # Every event was covered by a churn score at or after its event time.
    scored_until: dict[str, int] = defaultdict(int)
    for record in outputs["scores.churn"]:
        value = record["value"]
        scored_until[value["user_id"]] = max(scored_until[value["user_id"]], value["ts"])
    assert all(scored_until[e["user_id"]] >= e["ts"] for e in events)
    # Cart adds get recommendations: only users who added to their cart get any, and every
    # one whose cart still holds items does. (A user whose add and order fell into one batch
    # is scored once, with the cart the order emptied: no recommendation is due then, so how
    # many adders get one depends on how batches fall; whether the last cart was empty does
    # not: after the last batch with an add, later batches only remove or order.)
    adders = {e["user_id"] for e in events if e["type"] == "cart" and e["action"] == "add"}
    recs = {r["value"]["user_id"] for r in outputs["recs.cart"]}
    assert recs and recs <= adders
    holding = {u for u in adders if (helpers.user_view(worker.url, u) or {}).get("cart")}
    assert holding, "the log leaves no cart with items: the check below would be empty"
    assert holding <= recs, sorted(holding - recs)
    # The worker serves the latest scores with the features.
    user = next(iter(last))
    view = helpers.user_view(worker.url, user)
    assert view["scores"]["scores.interest"]["ts"] == last[user]["ts"]


def test_after_replay_until_t_every_user_has_a_churn_score_valid_at_t(
    settings, start_worker, wait, dump, worker_counts, tmp_path
) -> None:
    log = tmp_path / "log.jsonl"
    write_log(GeneratorConfig(users=120, days=15, seed=8), log)
    until = max(e["ts"] for e in _log_events(log)) + 10 * 86_400_000
    users = {e["user_id"] for e in _log_events(log)}
    worker = start_worker(settings)
    published = helpers.replay_cli(settings, log, "--until", str(until))
    wait(lambda: worker_counts(worker).consumed >= published, 180)

    def latest_at_t():
        latest = {r["key"]: r["value"] for r in dump(settings, "scores.churn", latest_per_key=True)}
        return set(latest) == users and all(v["ts"] == until for v in latest.values()) and latest

    latest = wait(latest_at_t, 120, 1.0)
    assert all(v["trigger"] == "clock" for v in latest.values())


def test_a_hot_model_swap_loses_nothing_and_a_mismatched_model_is_refused(
    settings, start_worker, wait, dump, worker_counts, tmp_path
) -> None:
    models = _copy_models(tmp_path / "models")
    settings = dataclasses.replace(settings, model_dir=models, model_poll_ms=300)
    log = tmp_path / "log.jsonl"
    write_log(GeneratorConfig(users=100, days=16, seed=2), log)
    # The log's first and second halves in event time, replayed on either side of the swap.
    lines = [line for line in log.read_bytes().splitlines(keepends=True) if line.strip()]
    middle = sorted(orjson.loads(line)["ts"] for line in lines)[len(lines) // 2]
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_bytes(b"".join(x for x in lines if orjson.loads(x)["ts"] < middle))
    second.write_bytes(b"".join(x for x in lines if orjson.loads(x)["ts"] >= middle))
    worker = start_worker(settings)
    published = helpers.replay_cli(settings, first)
    wait(lambda: worker_counts(worker).applied >= published, 120)
    old = json.loads((models / "churn.json").read_text())["version"]

    # A model trained on another feature schema is refused; the old one keeps serving.
    _retag(models, "refused-1", schema_hash="0" * 16)
    log_file = tmp_path / "worker.log"
    wait(lambda: "refusing the new models" in log_file.read_text(), 30)
    _copy_models(models)  # back to the shipped set, then a real new version
    _retag(models, "swapped-2")
    wait(lambda: "model churn swapped" in log_file.read_text(), 30)

    published += helpers.replay_cli(settings, second)
    counts = wait(lambda: (c := worker_counts(worker)) and c.applied >= published and c, 120)
    assert counts.applied == published
    churn = [r["value"] for r in dump(settings, "scores.churn")]
    versions = {v["models"]["onnx"] for v in churn}
    assert versions == {old, "swapped-2"}  # never the refused one
    second_users = {e["user_id"] for e in _log_events(second)}
    after = [v for v in churn if v["models"]["onnx"] == "swapped-2"]
    assert {v["user_id"] for v in after} >= second_users  # nothing lost across the swap
