"""Faust's Prometheus sensor as the worker installs it (``stream.worker.faust_sensor``)."""

from __future__ import annotations

import asyncio
import logging

import faust
from faust.types import TP
from prometheus_client import CollectorRegistry

from stream.worker.faust_sensor import install_faust_sensor
from stream.worker.metrics import Metrics


class _Message:
    time_in = None


def test_counts_reach_prometheus_at_scrape_time_and_the_monitor_stops_cleanly(caplog) -> None:
    app = faust.App("sensor-test", broker="kafka://127.0.0.1:1")
    registry = CollectorRegistry()
    monitor = install_faust_sensor(app, Metrics(registry), "shopscore_faust")
    assert app.monitor is monitor
    tp = TP("clicks", 2)
    for offset in range(5):
        monitor.on_message_in(tp, offset, _Message())
    monitor.on_message_out(tp, 4, _Message())
    # Nothing is handed to Prometheus per message; a scrape (collect) flushes first.
    sample = registry.get_sample_value
    assert sample("shopscore_faust_messages_received_total") == 5
    assert sample("shopscore_faust_messages_received_per_topic_total", {"topic": "clicks"}) == 5
    assert (
        sample(
            "shopscore_faust_messages_received_per_topics_partition",
            {"topic": "clicks", "partition": "2"},
        )
        == 4
    )
    assert sample("shopscore_faust_active_messages") == 4
    monitor.on_message_in(tp, 5, _Message())
    assert sample("shopscore_faust_messages_received_total") == 6  # counted once, not again

    async def start_and_stop() -> None:
        await monitor.start()
        await monitor.stop()

    with caplog.at_level(logging.ERROR):
        asyncio.run(start_and_stop())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
