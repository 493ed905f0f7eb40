"""shopscore's own Prometheus metrics, on one registry per app, next to Faust's sensor metrics.

Conventions: ``shopscore_`` prefix, ``_total`` counters, base units (seconds, bytes), and label
values from small fixed sets (contract topic names, reason codes, partitions): never a user id.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

__all__ = ["Metrics"]

_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """The worker's metric families; one instance per app (tests build several per process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total
        PlatformCollector(registry=r)
        self.consumed = Counter(
            "shopscore_events_consumed_total",
            "Input messages consumed, valid or not, per contract topic.",
            ["topic"],
            registry=r,
        )
        self.rejected = Counter(
            "shopscore_events_rejected_total",
            "Input messages sent to events.dlq, per topic and reason code.",
            ["topic", "reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "shopscore_events_duplicate_total",
            "Input events whose event_id the user's state had already applied (not re-applied).",
            ["topic"],
            registry=r,
        )
        self.misrouted = Counter(
            "shopscore_events_rekeyed_total",
            "Input events not keyed by user_id, re-published keyed by user_id.",
            ["topic"],
            registry=r,
        )
        self.applied = Counter(
            "shopscore_events_applied_total",
            "Input events applied to a user's state.",
            ["topic"],
            registry=r,
        )
        self.produced = Counter(
            "shopscore_messages_produced_total",
            "Messages this worker published, per output topic.",
            ["topic"],
            registry=r,
        )
        self.batch_size = Histogram(
            "shopscore_batch_size_events",
            "Messages per ingest micro-batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "shopscore_batch_processing_seconds",
            "Time to process one ingest micro-batch.",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.held = Gauge(
            "shopscore_events_held",
            "Valid events held back to be applied in event-time order across input topics.",
            registry=r,
        )
        self.users = Gauge(
            "shopscore_table_users",
            "Users held in this worker's state table (its partitions only).",
            registry=r,
        )
        self.lag = Gauge(
            "shopscore_consumer_lag_messages",
            "Messages between the last read offset and the partition's end, per input partition.",
            ["topic", "partition"],
            registry=r,
        )
