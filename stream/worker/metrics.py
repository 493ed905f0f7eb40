"""shopscore's own Prometheus metrics, on one registry per app, next to Faust's sensor metrics.

Conventions: ``shopscore_`` prefix, ``_total`` counters, base units (seconds, bytes), and label
values from small fixed sets (contract topic names, reason codes, partitions, model names and
metric names): never a user id. Faust's own sensor (``shopscore_faust_*`` on the same registry)
covers what it measures already: raw messages received and sent per physical topic (changelogs
included), commit and send latency, rebalances, HTTP status codes. Process RSS and CPU come from
prometheus-client's process collector (``process_resident_memory_bytes``,
``process_cpu_seconds_total``).

Families whose producer is not built yet (scoring, online learners, drift) are declared here so
dashboards and alerts can reference them; they have no samples until the code that fills them
lands, and a PromQL query over them returns an empty result, not an error.

>>> m = Metrics()
>>> m.consumed.labels("clicks").inc(3)
>>> m.registry.get_sample_value("shopscore_events_consumed_total", {"topic": "clicks"})
3.0
>>> m.registry.get_sample_value("shopscore_messages_produced_total", {"topic": "scores.churn"})
0.0
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from stream import __version__
from stream.contract.events import INPUT_TOPICS
from stream.contract.topics import DLQ, OUTPUT_TOPICS
from stream.pipeline.counts import Counts

__all__ = ["STATE_TABLES", "Metrics"]

_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Arrival to effect spans milliseconds in real time and minutes while a backlog is worked off.
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)


#: The tables whose changelog records a broker writer could forge (``state_rejected``).
STATE_TABLES = ("users", "scores", "learners", "clock")


class Metrics:
    """The worker's metric families; one instance per app (tests build several per process).

    Label values that are known up front (contract topics) start at zero, so ``rate()`` and
    ``increase()`` see the first increment and a dashboard shows a flat line rather than nothing.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total
        PlatformCollector(registry=r)
        self.build = Info("shopscore_build", "The shopscore version this worker runs.", registry=r)
        self.build.info({"version": __version__})
        self.ready = Gauge(
            "shopscore_worker_ready",
            "1 when GET /health says ready (partitions assigned, tables recovered), else 0.",
            registry=r,
        )

        # -- ingest -------------------------------------------------------------------------
        self.consumed = Counter(
            "shopscore_events_consumed_total",
            "Input messages consumed, valid or not, per contract topic.",
            ["topic"],
            registry=r,
        )
        self.rejected = Counter(
            "shopscore_events_rejected_total",
            "Input messages sent to events.dlq, per topic and reason code (late ones included).",
            ["topic", "reason"],
            registry=r,
        )
        self.late = Counter(
            "shopscore_events_late_total",
            "Input events older than the user's allowed lateness (dead-lettered as 'late'; "
            'also counted in shopscore_events_rejected_total{reason="late"}).',
            ["topic"],
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
            "Input events that arrived on a partition that does not own their user_id, "
            "re-published to the owner partition keyed by user_id.",
            ["topic"],
            registry=r,
        )
        self.rewinds = Counter(
            "shopscore_input_rewinds_total",
            "Seeks back to an input offset that was skipped before reaching the agent "
            "(stream.kafka.offsets); each is followed by a re-read, nothing is lost.",
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
        self.ingest_latency = Histogram(
            "shopscore_ingest_latency_seconds",
            "From an event's arrival in Kafka (record timestamp) to its application to the "
            "user's state, including time held for event-time alignment.",
            buckets=_LATENCY_BUCKETS,
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
        self.cached = Gauge(
            "shopscore_state_cache_users",
            "Users held decoded in the state cache (SHOPSCORE_STATE_CACHE), per table.",
            ["table"],
            registry=r,
        )
        self.decodes = Counter(
            "shopscore_state_cache_decodes_total",
            "Users decoded from their changelog bytes because the cache did not hold them.",
            ["table"],
            registry=r,
        )
        self.lag = Gauge(
            "shopscore_consumer_lag_messages",
            "Messages between the last read offset and the partition's end, per input "
            "partition this worker is assigned.",
            ["topic", "partition"],
            registry=r,
        )

        # -- scoring (filled by the scoring agents) ------------------------------------------
        self.end_to_end = Histogram(
            "shopscore_end_to_end_latency_seconds",
            "From an event's arrival in Kafka (record timestamp) to the score it triggered "
            "being handed to the producer.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.scoring_seconds = Histogram(
            "shopscore_scoring_batch_seconds",
            "Time of one scoring call (one onnxruntime run over a batch), per model.",
            ["model"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.scoring_batch_size = Histogram(
            "shopscore_scoring_batch_size_users",
            "Users scored per scoring call, per model.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.model = Info(
            "shopscore_model",
            "The model version in use (label version), per model; one sample per model.",
            ["model"],
            registry=r,
        )
        self.model_swaps = Counter(
            "shopscore_model_swaps_total",
            "Times a model was replaced by a new version while running, per model.",
            ["model"],
            registry=r,
        )
        self.scoring_errors = Counter(
            "shopscore_scoring_errors_total",
            "Users whose scoring failed with an unexpected error (a bug, or a forged state; "
            "logged, a traceback at most every 5 minutes). Their events are applied to the "
            "features; only their scores of that batch are missing, the batch's other users "
            "are scored.",
            registry=r,
        )
        self.state_rejected = Counter(
            "shopscore_state_records_rejected_total",
            "Changelog (state) records that could not be decoded and were skipped, per table: "
            "the key is treated as absent (logged once per key).",
            ["table"],
            registry=r,
        )
        self.broker_up = Gauge(
            "shopscore_broker_up",
            "1 while the broker answers this worker's requests, 0 once it has not answered for "
            "SHOPSCORE_BROKER_TIMEOUT.",
            registry=r,
        )
        self.model_rejected = Counter(
            "shopscore_model_rejected_total",
            "New model sets refused at a hot swap (corrupt, or another feature schema); the "
            "previous models kept serving.",
            registry=r,
        )

        # -- online learning (filled by the River learners) ---------------------------------
        self.online_metric = Gauge(
            "shopscore_online_metric",
            "Rolling quality of a model measured on labels the stream revealed later, per model "
            "and metric (churn: roc_auc_blend, roc_auc_onnx, log_loss_blend, log_loss_onnx, "
            "weight_online, weight_btyd; interest: hit_rate_at_k).",
            ["model", "metric"],
            registry=r,
        )
        self.drift = Counter(
            "shopscore_drift_detections_total",
            "Concept drifts detected by the online drift detector, per model.",
            ["model"],
            registry=r,
        )

        for topic in INPUT_TOPICS:
            for family in (self.consumed, self.applied, self.duplicates, self.late):
                family.labels(topic)
        for topic in (*OUTPUT_TOPICS, DLQ):
            self.produced.labels(topic)
        for table in STATE_TABLES:
            self.state_rejected.labels(table)
        self.broker_up.set(1)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, family: Any, *labels: str) -> Any:
        """``family.labels(*labels)``, resolved once: ``labels()`` takes a lock and builds a
        key per call, and a batch increments a few dozen children."""
        key = (id(family), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def record(self, counts: Counts) -> None:
        """Add what one pipeline call counted (``stream.pipeline.Counts``)."""
        child = self.child
        for topic, n in counts.consumed.items():
            child(self.consumed, topic).inc(n)
        for (topic, reason), n in counts.rejected.items():
            child(self.rejected, topic, reason).inc(n)
            if reason == "late":
                child(self.late, topic).inc(n)
        for topic, n in counts.duplicates.items():
            child(self.duplicates, topic).inc(n)
        for topic, n in counts.applied.items():
            child(self.applied, topic).inc(n)
        for topic, n in counts.misrouted.items():
            child(self.misrouted, topic).inc(n)
        for topic, n in counts.produced.items():
            child(self.produced, topic).inc(n)
        for learner, n in counts.drifts.items():
            child(self.drift, learner).inc(n)
        for table, n in counts.state_rejected.items():
            child(self.state_rejected, table).inc(n)
        if counts.scoring_errors:
            self.scoring_errors.inc(counts.scoring_errors)
        for model, seconds, users in counts.model_calls:
            child(self.scoring_seconds, model).observe(seconds)
            child(self.scoring_batch_size, model).observe(users)
        if counts.end_to_end_s:
            observe = self.end_to_end.observe
            for seconds in counts.end_to_end_s:
                observe(seconds)
        if counts.ingest_latency_s:
            observe = self.ingest_latency.observe
            for seconds in counts.ingest_latency_s:
                observe(seconds)
        for (model, metric), value in counts.online.items():
            child(self.online_metric, model, metric).set(value)
        self.held.set(counts.held)
