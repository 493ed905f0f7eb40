"""Faust's Prometheus sensor (``shopscore_faust_*``) without Prometheus calls per message.

Faust's ``PrometheusMonitor`` resolves a labelled child (``.labels(topic=...)``: label
validation, a lock, a dict lookup) several times for every message it sees, and once per
table read and write: 5–8% of the worker's time in a backlog (py-spy,
``docs/benchmarks.md``, "Benchmarks"). The metrics and their names stay Faust's; this monitor
resolves each child once and keeps it. Table writes made a batch at a time
(``stream.kafka.changelog``) are counted a batch at a time (``count_table_writes``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import PrometheusMonitor, setup_prometheus_sensors

from stream.worker.metrics import Metrics

__all__ = ["ShopscoreMonitor", "install_faust_sensor"]


class ShopscoreMonitor(PrometheusMonitor):
    """``PrometheusMonitor`` that counts messages and events in plain integers and hands them to
    Prometheus when it is scraped (``flush``), with its labelled children cached.

    Per message, Faust calls four sensor hooks; Faust's monitor took a timestamp, built a state
    dict and incremented six locked Prometheus values in them. Here each hook adds to an
    integer. ``shopscore_faust_events_runtime_ms`` (per-event processing time) is not
    observed: events are processed a batch at a time (``shopscore_batch_processing_seconds``).

    Labelled children are resolved once through ``child`` (the worker's ``Metrics.child``).
    """

    def __init__(self, metrics: Any, child: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(metrics, **kwargs)
        self._child = child
        self._stream_labels: dict[Any, str] = {}
        self._stream_events: Counter[Any] = Counter()
        #: What ``flush`` has handed to Prometheus so far.
        self._flushed: Counter[Any] = Counter()

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        self.messages_received_total += 1
        self.messages_active += 1
        self.messages_received_by_topic[tp.topic] += 1
        self.tp_read_offsets[tp] = offset

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> Any:
        self.events_total += 1
        self.events_active += 1
        self._stream_events[stream] += 1
        return None

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        self.events_active -= 1

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        self.messages_active -= 1

    def _add(self, key: Any, total: int, counter: Any) -> None:
        delta = total - self._flushed[key]
        if delta > 0:
            counter.inc(delta)
            self._flushed[key] = total

    def flush(self) -> None:
        """Hand the counts since the last flush to Prometheus (called at every scrape)."""
        metrics = self._metrics
        self._add("messages", self.messages_received_total, metrics.messages_received)
        for topic, n in list(self.messages_received_by_topic.items()):
            child = self._child(metrics.messages_received_per_topics, topic)
            self._add(("topic", topic), n, child)
        for tp, offset in list(self.tp_read_offsets.items()):
            self._child(
                metrics.messages_received_per_topics_partition, tp.topic, str(tp.partition)
            ).set(offset)
        metrics.active_messages.set(self.messages_active)
        self._add("events", self.events_total, metrics.total_events)
        metrics.total_active_events.set(self.events_active)
        for stream, n in list(self._stream_events.items()):
            label = self._stream_labels.get(stream)
            if label is None:
                label = self._stream_labels[stream] = f"stream.{self._stream_label(stream)}.events"
            self._add(("stream", label), n, self._child(metrics.total_events_per_stream, label))

    def _table_operation(self, table: str, operation: str) -> Any:
        return self._child(self._metrics.table_operations, f"table.{table}", operation)

    def on_table_get(self, table: Any, key: Any) -> None:
        Monitor.on_table_get(self, table, key)
        self._table_operation(table.name, self.KEYS_RETRIEVED).inc()

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        Monitor.on_table_set(self, table, key, value)
        self._table_operation(table.name, self.KEYS_UPDATED).inc()

    def on_table_del(self, table: Any, key: Any) -> None:
        Monitor.on_table_del(self, table, key)
        self._table_operation(table.name, self.KEYS_DELETED).inc()

    def on_send_initiated(
        self, producer: Any, topic: str, message: Any, keysize: int, valsize: int
    ) -> Any:
        self._child(self._metrics.topic_messages_sent, f"topic.{topic}").inc()
        return Monitor.on_send_initiated(self, producer, topic, message, keysize, valsize)

    def track_tp_end_offset(self, tp: Any, offset: int) -> None:
        Monitor.track_tp_end_offset(self, tp, offset)
        self._child(self._metrics.topic_partition_end_offset, tp.topic, str(tp.partition)).set(
            offset
        )

    def count_table_writes(
        self, tables: Mapping[str, Any], counts: Mapping[tuple[str, str], int]
    ) -> None:
        """Count keys written a batch at a time: ``counts`` maps (table name, operation:
        ``keys_updated`` or ``keys_deleted``) to a number of keys."""
        for (name, operation), n in counts.items():
            self._table_operation(name, operation).inc(n)
            state = self._table_or_create(tables[name])
            setattr(state, operation, getattr(state, operation) + n)


class _FlushOnScrape:
    """A collector that exports nothing and flushes the monitor first: registered before
    Faust's metrics, so a scrape reads them up to date."""

    def __init__(self) -> None:
        self.monitor: ShopscoreMonitor | None = None

    def collect(self) -> list[Any]:
        if self.monitor is not None:
            self.monitor.flush()
        return []


def install_faust_sensor(app: Any, metrics: Metrics, name_prefix: str) -> ShopscoreMonitor:
    """Faust's Prometheus sensor on the worker's registry (its metrics, its ``/metrics``
    page), with ``ShopscoreMonitor`` as the app's monitor."""
    registry = metrics.registry
    flusher = _FlushOnScrape()
    registry.register(flusher)  # type: ignore[arg-type]
    setup_prometheus_sensors(app, pattern="/metrics", registry=registry, name_prefix=name_prefix)
    monitor = ShopscoreMonitor(metrics=app.monitor._metrics, child=metrics.child)
    app.monitor = monitor
    flusher.monitor = monitor
    return monitor
