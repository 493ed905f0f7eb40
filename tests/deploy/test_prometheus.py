"""deploy/prometheus: the config and rules pass promtool, and a real Prometheus scraping a real
worker through a replay holds the series an operator reads, with the values that happened."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from offline_train.replay import replay_log
from stream import __version__
from stream.features import FeatureConfig
from stream.tools.embedded import read_worker_metrics

PROMETHEUS_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus.yml"
RULES = [
    PROMETHEUS_CONFIG.parent / name
    for name in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]
]


def test_promtool_checks_the_config_and_its_rules(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert RULES and all(path.exists() for path in RULES)
    result = subprocess.run(
        [promtool, "check", "rules", *map(str, RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_deployed_config_finds_workers_by_the_compose_service_name() -> None:
    job = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"][0]
    assert job["job_name"] == "shopscore" and job["metrics_path"] == "/metrics"
    (dns,) = job["dns_sd_configs"]
    assert dns["names"] == ["worker"] and dns["type"] == "A" and dns["port"] == 6066


@pytest.mark.broker
def test_prometheus_holds_what_the_worker_did(scraped: Any, wait) -> None:
    prom, job = scraped.prometheus, scraped.job
    sel = f'{{job="{job}"}}'
    # Expected outcomes computed offline with the same cleaning rules and feature core.
    offline = replay_log(scraped.log, FeatureConfig(), now_ms=int(time.time() * 1000))

    assert prom.value(f"sum(shopscore_events_consumed_total{sel})") == scraped.published
    rejected = prom.by(f"sum by (reason) (shopscore_events_rejected_total{sel})", "reason")
    assert rejected == {reason: float(n) for reason, n in offline.rejected.items()}
    assert sum(rejected.values()) == len(scraped.truth["invalid"]) > 0
    duplicates = prom.value(f"sum(shopscore_events_duplicate_total{sel})")
    assert duplicates == scraped.truth["duplicates"] == offline.outcomes["duplicate"] > 0
    applied = prom.value(f"sum(shopscore_events_applied_total{sel})")
    assert applied == offline.outcomes["applied"]
    assert applied + sum(rejected.values()) + duplicates == scraped.published
    assert prom.value(f"sum(shopscore_events_late_total{sel})") == 0
    # Per topic, Prometheus holds what the worker's own /metrics says (no label mix-ups).
    worker_metrics = _per_topic(scraped)
    assert prom.by(f"sum by (topic) (shopscore_events_consumed_total{sel})", "topic") == (
        worker_metrics
    )
    assert set(worker_metrics) == {"clicks", "carts", "orders"}
    # Every invalid event went to the dead-letter topic, and was counted as produced there.
    assert prom.value(
        f'sum(shopscore_messages_produced_total{{job="{job}", topic="events.dlq"}})'
    ) == sum(rejected.values())
    # Every valid event passed through alignment and was timed from arrival to application.
    assert prom.value(f"sum(shopscore_ingest_latency_seconds_count{sel})") == applied + duplicates
    assert prom.value(f"sum(shopscore_batch_size_events_sum{sel})") == scraped.published

    # Gauges refresh every second: wait for the settled values.
    users = float(len(offline.states))
    wait(lambda: prom.value(f"sum(shopscore_table_users{sel})") == users, 30)
    wait(lambda: prom.value(f"sum(shopscore_consumer_lag_messages{sel})") == 0, 30)
    lag_series = prom.query(f"shopscore_consumer_lag_messages{sel}")
    assert {(s["metric"]["topic"], s["metric"]["partition"]) for s in lag_series} == {
        (topic, str(p)) for topic in ("clicks", "carts", "orders") for p in range(4)
    }
    assert prom.value(f"sum(shopscore_events_held{sel})") == 0
    # Users this worker touched are held decoded (all of them, unless a rebalance cleared it).
    cached = prom.value(f'shopscore_state_cache_users{{table="users", job="{job}"}}')
    assert cached is not None and 0 < cached <= users
    assert prom.value(f"shopscore_worker_ready{sel}") == 1
    assert prom.value(f'shopscore_build_info{{job="{job}", version="{__version__}"}}') == 1
    assert prom.value(f"process_resident_memory_bytes{sel}") > 50e6
    assert prom.value(f"process_cpu_seconds_total{sel}") > 0
    # Faust's own sensor, on the same endpoint: it received every input message too.
    prefix = scraped.settings.topic_prefix
    faust_in = prom.by(
        f"sum by (topic) (shopscore_faust_messages_received_per_topic_total{sel})", "topic"
    )
    assert sum(faust_in.get(f"{prefix}{t}", 0) for t in worker_metrics) == scraped.published
    # Families the scoring code fills later are declared: queries run and find nothing yet.
    assert prom.query(f"shopscore_model_swaps_total{sel}") == []


def _per_topic(scraped: Any) -> dict[str, float]:
    with urllib.request.urlopen(f"{scraped.worker.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "shopscore_events_consumed_total":
                out[sample.labels["topic"]] = sample.value
    assert sum(out.values()) == read_worker_metrics(scraped.worker.url).consumed
    return out


@pytest.mark.broker
def test_alert_rules_evaluate_without_error_and_stay_quiet(scraped: Any, wait) -> None:
    prom = scraped.prometheus

    def evaluated() -> list[dict] | None:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        done = all(not r.get("lastEvaluation", "").startswith("0001") for r in rules)
        return rules if rules and done else None

    rules = wait(evaluated, 30)
    assert {r["name"] for r in rules} >= {"ShopscoreNoWorkerUp", "ShopscoreConsumerLagHigh"}
    for rule in rules:
        assert rule["health"] == "ok", rule
        assert rule["state"] == "inactive", rule  # a healthy worker raises no alert
