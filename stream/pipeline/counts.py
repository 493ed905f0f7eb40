"""What a batch counted, as plain numbers: the worker adds them to its Prometheus metrics in one
place (``stream.worker.metrics.Metrics.record``), offline evaluation sums them or ignores them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Counts"]


@dataclass
class Counts:
    """Metric increments of one ``Pipeline.process`` call (names follow ``stream.worker.metrics``)."""

    #: Input records per contract topic, valid or not.
    consumed: Counter[str] = field(default_factory=Counter)
    #: (contract topic, reason) of every dead-lettered input ("late" included).
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    applied: Counter[str] = field(default_factory=Counter)
    #: Input events re-published to the partition that owns their user, per topic.
    misrouted: Counter[str] = field(default_factory=Counter)
    #: Records produced, per contract output topic (the dead-letter topic included).
    produced: Counter[str] = field(default_factory=Counter)
    #: Labels delivered to the online learners, per learner.
    labels: Counter[str] = field(default_factory=Counter)
    drifts: Counter[str] = field(default_factory=Counter)
    #: Table records refused while loading state, per table (a forged learners checkpoint).
    state_rejected: Counter[str] = field(default_factory=Counter)
    scoring_errors: int = 0
    #: (model, seconds of its onnxruntime call, users in the call).
    model_calls: list[tuple[str, float, int]] = field(default_factory=list)
    #: Seconds from the Kafka timestamp of an event to its scores being ready.
    end_to_end_s: list[float] = field(default_factory=list)
    #: Seconds from the Kafka timestamp of an event to its being applied.
    ingest_latency_s: list[float] = field(default_factory=list)
    #: Latest rolling metric of the online learners: (model, metric) -> value.
    online: dict[tuple[str, str], float] = field(default_factory=dict)
    #: Events the aligner holds after the call.
    held: int = 0
