"""GET /health: 503 "starting" until the worker holds partitions and recovered its tables."""

from __future__ import annotations

import dataclasses
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.tools.embedded import WorkerProcess

pytestmark = [pytest.mark.broker, pytest.mark.both_brokers]


def test_health_is_starting_until_partitions_are_assigned_and_tables_recovered(
    settings, tmp_path: Path
) -> None:
    # A longer group join (Tansu waits for the rebalance timeout) keeps the worker visibly
    # "starting" for a few seconds after its web server answers.
    settings = dataclasses.replace(settings, rebalance_timeout_ms=5_000)
    worker = WorkerProcess(settings, log_path=tmp_path / "worker.log").start()
    seen: list[tuple[str, dict]] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert worker.proc is not None and worker.proc.poll() is None, "worker exited"
            body = worker.health()
            if body is not None:
                seen.append((body["status"], body))
                if body["status"] == "ready":
                    break
            time.sleep(0.05)
        statuses = [status for status, _ in seen]
        assert statuses and statuses[-1] == "ready", (tmp_path / "worker.log").read_text()[-3000:]
        starting = [body for status, body in seen if status == "starting"]
        assert starting, "the worker never answered 'starting' before it was ready"
        assert statuses.index("ready") > statuses.index("starting")
        for body in starting:  # every "starting" answer says what is still missing
            assert (
                body["assigned_partitions"] == 0
                or not body["tables_recovered"]
                or body["rebalancing"]
            ), body
        ready = seen[-1][1]
        assert ready["assigned_partitions"] > 0
        assert ready["tables_recovered"] is True and ready["rebalancing"] is False
        # The same readiness is exported for Prometheus (refreshed every second).
        deadline = time.monotonic() + 10
        while _ready_gauge(worker.url) != 1.0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ready_gauge(worker.url) == 1.0
    finally:
        worker.stop(timeout=10)


def _ready_gauge(url: str) -> float | None:
    with urllib.request.urlopen(f"{url}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "shopscore_worker_ready":
                return sample.value
    return None
