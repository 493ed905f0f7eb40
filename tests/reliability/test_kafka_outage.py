"""A real broker outage: Apache Kafka's process is gone for 60 s mid-stream, then back on its log.

The embedded broker can only be frozen (it keeps data in memory, ``test_broker_outage``);
Apache Kafka keeps its log on disk, so here the broker process really ends (a controlled
SIGTERM shutdown, and a SIGKILL crash), stays down for 60 s, and starts again on the same log
directory and ports. The same worker process, never restarted, then finishes the backlog
with every user's features equal to the offline computation (nothing lost, nothing applied
twice) and a score for every user. The broker is a dedicated one, so no other test loses it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time

import pytest

from stream.tools.apache_kafka import ApacheKafka
from stream.tools.dump import dump_topic
from stream.tools.generator import GeneratorConfig, write_log

pytestmark = pytest.mark.broker

DOWN_S = 60


@pytest.fixture
def own_kafka(tmp_path):
    node = ApacheKafka(tmp_path / "kafka").start()
    try:
        yield node
    finally:
        node.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_worker_recovers_when_apache_kafka_is_down_for_60s(
    sig, settings, own_kafka, start_worker, wait, worker_counts, helpers, settle, wait_lag_zero,
    tmp_path,
) -> None:  # fmt: skip
    settings = dataclasses.replace(
        settings, broker=own_kafka.url, session_timeout_ms=10_000, rebalance_timeout_ms=10_000
    )
    log = tmp_path / "log.jsonl"
    write_log(GeneratorConfig(users=250, days=15, seed=23, duplicate_fraction=0.01), log)
    expected, _ = helpers.offline_views(log, int(time.time() * 1000))
    published = helpers.replay_cli(settings, log)
    worker = start_worker(settings)
    pid = worker.proc.pid

    wait(lambda: worker_counts(worker).consumed >= published // 5, 120, 0.05)
    before = worker_counts(worker).consumed
    own_kafka.stop(sig=sig)
    time.sleep(DOWN_S)
    assert worker.proc.poll() is None, "the worker exited while the broker was down"
    own_kafka.start()
    print(f"outage ({sig.name}): broker gone after {before:.0f} of {published} consumed")

    wait_lag_zero([worker], at_least=published)
    settle([worker.url], expected)
    assert worker.proc is not None and worker.proc.pid == pid and worker.proc.poll() is None
    assert (worker.health() or {}).get("status") == "ready"
    scored = {
        r["key"] for r in asyncio.run(dump_topic(settings, "scores.churn", latest_per_key=True))
    }
    assert set(expected) <= scored
