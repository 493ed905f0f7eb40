"""Progressive (prequential) evaluation of the scoring engine over an event log, offline.

It runs what the worker runs, the very same code: each event goes through the worker's batch
pipeline (``stream.pipeline.Pipeline``: cleaning, event-time alignment, the feature core, the
scoring steps, due labels, clock ticks), in micro-batches, on one partition, with labels
revealed only as the log reveals them. Every churn score the pipeline publishes is kept with
the ONNX model's own probability, then judged against what the log's future says (an order
within the horizon or not), so "blend vs ONNX alone" is measured on the very predictions the
service would have published.

    python -m offline_train.online_eval LOG.jsonl [--clv-period 90d]

runs it over a log and prints ``offline_train.judge``'s report of every message it published
(churn per expert and horizon, interest, recommendations, lifetime value).
"""

from __future__ import annotations

import asyncio
import dataclasses
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream.contract.events import TOPIC_OF_KIND, Event, Order, to_wire
from stream.contract.topics import CLOCK
from stream.models.registry import Model
from stream.pipeline import BatchOutput, InputRecord, Pipeline, PipelineConfig, Stores
from stream.scoring.engine import ScoringConfig
from stream.scoring.state import Learners

__all__ = ["JUDGED_TOPICS", "ChurnRecord", "churn_records", "clean_log", "evaluate_log"]

#: The topics ``offline_train.judge`` judges.
JUDGED_TOPICS = ("scores.churn", "scores.interest", "scores.purchase_power", "recs.cart")


@dataclass(frozen=True, slots=True)
class ChurnRecord:
    user_id: str
    ts: int
    blended: float
    onnx: float
    #: The BTYD expert's probability of no order within each horizon (``"30d"``...), and
    #: its P(alive); None before the user's first order.
    btyd: dict[str, float] | None = None
    p_alive: float | None = None


@dataclass
class OnlineRun:
    records: list[ChurnRecord] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    drifts: int = 0
    orders: dict[str, list[int]] = field(default_factory=dict)
    end_ms: int = 0
    #: Events the pipeline dead-lettered, per reason (a clean log has none but "late" ones).
    rejected: dict[str, int] = field(default_factory=dict)
    #: With ``evaluate_log(keep_messages=True)``: every published message, per topic (what
    #: ``offline_train.judge`` reads).
    messages: dict[str, list[dict[str, Any]]] | None = None

    def collect(self, out: BatchOutput) -> None:
        if self.messages is not None:
            for record in out.records:
                if record.topic in JUDGED_TOPICS:
                    self.messages.setdefault(record.topic, []).append(orjson.loads(record.value))
        for record in out.records:
            if record.topic == "scores.churn":
                value = orjson.loads(record.value)
                btyd = value["components"].get("btyd")
                self.records.append(
                    ChurnRecord(
                        value["user_id"],
                        value["ts"],
                        value["churn_probability"],
                        value["components"]["onnx"],
                        btyd["churn"] if btyd else None,
                        btyd["p_alive"] if btyd else None,
                    )
                )
        for name, n in out.counts.labels.items():
            self.labels[name] = self.labels.get(name, 0) + n
        self.drifts += sum(out.counts.drifts.values())
        for (_topic, reason), n in out.counts.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + n


class ScoringErrors(RuntimeError):
    """Some users could not be scored: an offline figure must not silently leave users out."""


def evaluate_log(
    events: Iterable[Event],
    models: dict[str, Model],
    *,
    config: ScoringConfig | None = None,
    batch_size: int = 500,
    churn_only: bool = True,
    clock_at: Sequence[int] = (),
    keep_messages: bool = False,
) -> OnlineRun:
    """Score ``events`` (clean, in event-time order) as a single-partition worker would,
    delivering labels as stream time passes their due time. At each time in ``clock_at``
    every idle user is re-scored, as a ``clock`` message (``replay --until T``) does; a batch
    ends before each tick, so the tick sees the states as of its time."""
    pipeline = Pipeline(
        PipelineConfig(
            partitions=1,
            scoring=config or ScoringConfig(),
            check_future=False,
            score_all=not churn_only,
            checkpoint_every_s=None,
        ),
        models,
        stores := Stores.in_memory(),
        make_learners=lambda partition: Learners(seed=partition),
    )
    run = OnlineRun(messages={} if keep_messages else None)

    async def drive() -> None:
        for batch in _batches(events, batch_size, sorted(clock_at), run):
            out = await pipeline.process(batch)
            stores.apply(out.writes)
            if out.counts.scoring_errors:
                raise ScoringErrors(
                    f"{out.counts.scoring_errors} users could not be scored (logged above)"
                )
            run.collect(out)

    asyncio.run(drive())
    return run


def _batches(
    events: Iterable[Event], size: int, clocks: list[int], run: OnlineRun
) -> Iterator[list[InputRecord]]:
    """``events`` as input records of partition 0, ``size`` at a time, with a batch of one
    clock record at each time of ``clocks`` once the log has passed it (or at its end)."""
    offsets = dict.fromkeys((*TOPIC_OF_KIND.values(), CLOCK), 0)

    def record(topic: str, value: dict[str, object]) -> InputRecord:
        offset = offsets[topic]
        offsets[topic] = offset + 1
        return InputRecord(topic, 0, offset, None, orjson.dumps(value))

    batch: list[InputRecord] = []
    for event in events:
        while clocks and event.ts > clocks[0]:
            if batch:
                yield batch
                batch = []
            yield [record(CLOCK, {"ts": clocks.pop(0), "source": "evaluation"})]
        if isinstance(event, Order):
            run.orders.setdefault(event.user_id, []).append(event.ts)
        run.end_ms = max(run.end_ms, event.ts)
        batch.append(record(TOPIC_OF_KIND[event.kind], to_wire(event)))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
    for at_ms in clocks:
        yield [record(CLOCK, {"ts": at_ms, "source": "evaluation"})]


def churn_records(
    run: OnlineRun, horizon_ms: int, *, since_ms: int = 0, until_ms: int | None = None
) -> list[tuple[ChurnRecord, bool]]:
    """Records made in ``[since_ms, until_ms)`` whose horizon ends inside the log, each with its
    label from the log's future: True when no order follows within the horizon."""
    out = []
    last_judgeable = run.end_ms - horizon_ms
    until = last_judgeable if until_ms is None else min(until_ms, last_judgeable)
    for record in run.records:
        if not since_ms <= record.ts < until:
            continue
        orders = run.orders.get(record.user_id, [])
        i = bisect_right(orders, record.ts)
        ordered = i < len(orders) and orders[i] <= record.ts + horizon_ms
        out.append((record, not ordered))
    return out


def clean_log(path: str | Path) -> list[Event]:
    """The log's valid events in the order ``shopscore replay`` publishes them."""
    from offline_train.replay import clean_events

    return [e for e in clean_events(path, now_ms=None) if not isinstance(e, Exception)]


def snapshot_records(run: OnlineRun, at_ms: int, horizon_ms: int) -> list[tuple[ChurnRecord, bool]]:
    """Each user's latest churn score at ``at_ms`` (what ``dump --latest-per-key`` shows after
    ``replay --until``), with its label from the log's future."""
    latest: dict[str, ChurnRecord] = {}
    for record in run.records:
        if record.ts <= at_ms:
            latest[record.user_id] = record
    out = []
    for record in latest.values():
        orders = run.orders.get(record.user_id, [])
        i = bisect_right(orders, record.ts)
        ordered = i < len(orders) and orders[i] <= record.ts + horizon_ms
        out.append((record, not ordered))
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m offline_train.online_eval LOG``: run the worker's pipeline over ``LOG`` (one
    partition, every model) and print ``offline_train.judge``'s report of what it published:
    churn per expert and horizon, interest, recommendations, lifetime value."""
    import argparse
    import json
    import sys

    from offline_train.judge import LogTruth, judge
    from stream.models.registry import load_models
    from stream.settings import Settings, parse_duration_ms

    parser = argparse.ArgumentParser(
        description=main.__doc__.splitlines()[0] if main.__doc__ else None
    )
    parser.add_argument("log", type=Path)
    parser.add_argument(
        "--clv-period", default=None, help="e.g. 90d (default: SHOPSCORE_CLV_PERIOD)"
    )
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args(argv)
    config = Settings.from_env().scoring_config()
    if args.clv_period:
        config = dataclasses.replace(config, clv_period_ms=parse_duration_ms(args.clv_period))
    events = clean_log(args.log)
    run = evaluate_log(
        events,
        load_models(),
        config=config,
        batch_size=args.batch_size,
        churn_only=False,
        keep_messages=True,
    )
    report = judge(LogTruth(events), run.messages or {})
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
