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
import signal
import time

import pytest

from stream.tools.apache_kafka import ApacheKafka, on_kafka
from stream.tools.dump import dump_topic

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
    sig, settings, own_kafka, mid_backlog, settle, wait_lag_zero
) -> None:
    settings = on_kafka(settings, own_kafka.url)
    backlog = mid_backlog(settings, 23)
    own_kafka.stop(sig=sig)
    time.sleep(DOWN_S)
    assert backlog.worker.proc.poll() is None, "the worker exited while the broker was down"
    own_kafka.start()
    print(f"outage ({sig.name}): gone after {backlog.consumed:.0f} of {backlog.published} consumed")
    backlog.finished(settle, wait_lag_zero)
    scored = {
        r["key"] for r in asyncio.run(dump_topic(settings, "scores.churn", latest_per_key=True))
    }
    assert set(backlog.expected) <= scored
