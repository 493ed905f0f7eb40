"""``shopscore bench --quick`` runs end to end against the session broker and reports every key.

A benchmark is not a test: nothing here looks at the figures, only that they are there.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stream.tools.bench import PHASES

pytestmark = pytest.mark.broker

KEYS = {
    "throughput_eps",
    "bare_throughput_eps",
    "ratio_to_bare",
    "consume_only_eps",
    "ratio_to_consume_only",
    "latency_ms",
    "latency_below_saturation_ms",
    "rss_mb_per_100k_users",
    "state_bytes_per_user",
    "recovery_s_per_100k_users",
    "backfill_eps",
    "backfill_s",
    "ratio_backfill_to_throughput",
    "measured_users",
    "versions",
    "broker",
}


def test_quick_bench_reports_every_figure(settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stream", "bench", "--quick", "--json"],
        env=settings.env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report) >= KEYS
    for figures in ("latency_ms", "latency_below_saturation_ms"):
        assert set(report[figures]) >= {"p50", "p95", "p99", "max", "rate_eps"}
    assert report["versions"].keys() >= {"python", "faust-streaming", "aiokafka", "onnxruntime"}
    assert report["broker"]["kind"] == "configured"
    full = report["throughput"]["full"]
    assert full["applied"] + full["rejected"] == full["events"]  # all consumed and counted
    assert report["state"]["table_users"] == report["measured_users"]
    assert report["throughput"]["consume_only"]["consumed"] >= full["events"]
    filled = report["backfill"]
    assert filled["applied"] == filled["orders"] == filled["published"] > 0
    # a progress line per phase
    assert all(f"[{i}/{PHASES}]" in result.stderr for i in range(1, PHASES + 1))
