"""Progressive (prequential) evaluation of the scoring engine over an event log, offline.

It runs what the worker runs: the same cleaning, feature core and ``stream.scoring.Scorer``,
in event-time order, in micro-batches, with labels revealed only as the log reveals them. Every
churn score is kept with the ONNX model's own probability, then judged against what the log's
future says (an order within the horizon or not), so "blend vs ONNX alone" is measured on the
very predictions the service would have published.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stream.events import Event, Order
from stream.features import FeatureConfig, UserState, apply_event
from stream.features.state import Outcome
from stream.models.registry import Model
from stream.scoring.engine import Scorer, ScoreResult, ScoringConfig, UserInput
from stream.scoring.pending import DueLabels
from stream.scoring.state import Learners, UserScores

__all__ = ["ChurnRecord", "churn_records", "clean_log", "evaluate_log"]


@dataclass(frozen=True, slots=True)
class ChurnRecord:
    user_id: str
    ts: int
    blended: float
    onnx: float


@dataclass
class OnlineRun:
    records: list[ChurnRecord] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    drifts: int = 0
    orders: dict[str, list[int]] = field(default_factory=dict)
    end_ms: int = 0


def evaluate_log(
    events: Iterable[Event],
    models: dict[str, Model],
    *,
    config: ScoringConfig | None = None,
    batch_size: int = 500,
    churn_only: bool = True,
    clock_at: Sequence[int] = (),
) -> OnlineRun:
    """Score ``events`` (clean, in event-time order) as a single-partition worker would,
    delivering labels as stream time passes their due time. At each time in ``clock_at``
    every idle user is re-scored, as a ``clock`` message (``replay --until T``) does."""
    config = config or ScoringConfig()
    features: FeatureConfig = config.features
    scorer = Scorer(models, config)
    learners = Learners(seed=0)
    states: dict[str, UserState] = {}
    scores: dict[str, UserScores] = {}
    run = OnlineRun()
    batch: list[Event] = []

    due = DueLabels()

    def deliver(now_ms: int) -> None:
        idle = [
            UserInput(u, 0, states[u], scores[u], [], now_ms, "clock")
            for u in due.pop_due(now_ms)
            if (states[u].max_ts or 0) < now_ms
        ]
        collect(scorer.score(idle, lambda _p: learners, True))

    def collect(result: ScoreResult) -> None:
        for topic, _key, value in result.messages:
            if topic == "scores.churn":
                run.records.append(
                    ChurnRecord(
                        value["user_id"],
                        value["ts"],
                        value["churn_probability"],
                        value["components"]["onnx"],
                    )
                )
        for name, n in result.labels.items():
            run.labels[name] = run.labels.get(name, 0) + n
        run.drifts += len(result.drifts)
        for _partition, due_ms, user_id in result.due:
            due.add(due_ms, user_id)

    clocks = sorted(clock_at)

    def clock(at_ms: int) -> None:
        idle = [
            UserInput(uid, 0, state, scores.setdefault(uid, UserScores()), [], at_ms, "clock")
            for uid, state in states.items()
            if (state.max_ts or 0) < at_ms
        ]
        collect(scorer.score(idle, lambda _p: learners, True))

    def flush() -> None:
        touched: dict[str, list[Event]] = {}
        for event in batch:
            state = states.setdefault(event.user_id, UserState(event.user_id))
            if apply_event(state, event, features) is Outcome.APPLIED:
                touched.setdefault(event.user_id, []).append(event)
        users = [
            UserInput(
                uid,
                0,
                states[uid],
                scores.setdefault(uid, UserScores()),
                evs,
                states[uid].max_ts or evs[-1].ts,
                evs[-1].event_id,
            )
            for uid, evs in touched.items()
        ]
        collect(scorer.score(users, lambda _p: learners, churn_only))
        deliver(max(e.ts for e in batch))
        batch.clear()

    for event in events:
        while clocks and event.ts > clocks[0]:
            if batch:
                flush()
            deliver(clocks[0])
            clock(clocks.pop(0))
        if isinstance(event, Order):
            run.orders.setdefault(event.user_id, []).append(event.ts)
        run.end_ms = max(run.end_ms, event.ts)
        batch.append(event)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    for at_ms in clocks:
        deliver(at_ms)
        clock(at_ms)
    return run


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


def snapshot_records(
    run: OnlineRun, at_ms: int, horizon_ms: int
) -> list[tuple[ChurnRecord, bool]]:
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
