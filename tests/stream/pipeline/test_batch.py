"""The batch pipeline in-process: plain records and dict tables in, everything it did out.

No broker and no Faust: what the worker would write, produce and commit is read off the
``BatchOutput``, and a "restart" is a new pipeline over the same tables.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from stream.contract.partitioning import owner_partition
from stream.models.registry import load_models
from stream.pipeline import BatchOutput, InputRecord, Pipeline, PipelineConfig, Stores
from stream.scoring.engine import ScoringConfig

NOW = 1_767_225_600_000  # the wall clock of these tests (2026-01-01)
DAY = 86_400_000
PARTITIONS = 4


class Clock:
    """Wall and monotonic time the test moves by hand."""

    def __init__(self) -> None:
        self.wall_s = NOW / 1000
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.wall_s += seconds
        self.mono += seconds


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return load_models()


def user_on(partition: int, n: int = 0) -> str:
    """The ``n``-th user id (of u0, u1, ...) whose owner partition is ``partition``."""
    found = (f"u{i}" for i in range(10_000) if owner_partition(f"u{i}", PARTITIONS) == partition)
    for _ in range(n):
        next(found)
    return next(found)


class Feed:
    """Input records with consecutive offsets per (topic, partition)."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}

    def record(
        self, topic: str, partition: int, value: Any, key: bytes | None = None
    ) -> InputRecord:
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[topic, partition] = offset + 1
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        return InputRecord(topic, partition, offset, key, raw, timestamp_s=NOW / 1000)

    def click(self, user: str, ts: int, event_id: str, partition: int | None = None) -> InputRecord:
        value = {"event_id": event_id, "user_id": user, "ts": ts, "item_id": "i1", "price": 20}
        if partition is None:
            partition = owner_partition(user, PARTITIONS)
        return self.record("clicks", partition, value, user.encode())

    def order(self, user: str, ts: int, event_id: str) -> InputRecord:
        value = {
            "event_id": event_id,
            "user_id": user,
            "ts": ts,
            "order_id": f"o-{event_id}",
            "items": [{"item_id": "i1", "price": 20.0}],
        }
        return self.record("orders", owner_partition(user, PARTITIONS), value, user.encode())

    def tick(self, partition: int, ts: int) -> InputRecord:
        return self.record("clock", partition, {"ts": ts})


def make(models: dict[str, Any], stores: Stores, clock: Clock) -> Pipeline:
    return Pipeline(
        PipelineConfig(partitions=PARTITIONS, align_max_hold_s=5.0),
        models,
        stores,
        wall=lambda: clock.wall_s,
        monotonic=lambda: clock.mono,
    )


def run(pipeline: Pipeline, records: list[InputRecord], caught_up: Any = None) -> BatchOutput:
    """One batch, its writes applied to the tables as the worker applies them."""
    if caught_up is None:
        out = asyncio.run(pipeline.process(records))
    else:
        out = asyncio.run(pipeline.process(records, caught_up))
    pipeline.stores.apply(out.writes)
    return out


def topics_of(out: BatchOutput) -> list[str]:
    return [record.topic for record in out.records]


def churn_of(out: BatchOutput) -> dict[str, dict[str, Any]]:
    return {
        record.key.decode(): orjson.loads(record.value)
        for record in out.records
        if record.topic == "scores.churn" and record.key is not None
    }


def test_a_batch_writes_states_publishes_scores_and_commits_past_its_records(models) -> None:
    feed, clock, stores = Feed(), Clock(), Stores.in_memory()
    pipeline = make(models, stores, clock)
    alice, bob = user_on(0), user_on(1)
    records = [
        feed.click(alice, NOW - 3000, "a1"),
        feed.click(bob, NOW - 2000, "b1"),
        feed.click(alice, NOW - 1000, "a2"),
    ]
    out = run(pipeline, records)
    assert out.counts.consumed == {"clicks": 3} and out.counts.applied == {"clicks": 3}
    assert out.commit == {("clicks", 0): 2, ("clicks", 1): 1}
    assert {w.key for w in out.writes if w.table == "users"} == {alice.encode(), bob.encode()}
    assert {(w.key, w.partition) for w in out.writes if w.table == "users"} == {
        (alice.encode(), 0),
        (bob.encode(), 1),
    }
    assert stores.users[alice.encode()].max_ts == NOW - 1000
    churn = churn_of(out)
    assert set(churn) == {alice, bob}
    assert churn[alice]["ts"] == NOW - 1000  # scored once per batch, at its last event
    assert topics_of(out).count("scores.churn") == 2
    assert set(topics_of(out)) >= {"scores.interest", "scores.purchase_power", "offers"}
    assert out.counts.produced["scores.churn"] == 2
    assert {w.table for w in out.writes} >= {"users", "scores", "learners"}  # first checkpoint


def test_a_redelivered_batch_is_recognised_and_its_users_scored_again(models) -> None:
    feed, clock, stores = Feed(), Clock(), Stores.in_memory()
    alice = user_on(2)
    records = [feed.click(alice, NOW - 2000, "a1"), feed.click(alice, NOW - 1000, "a2")]
    first = run(make(models, stores, clock), records)
    # A crash after the writes, before the commit: a new worker reads the batch again.
    again = run(make(models, stores, clock), records)
    assert again.counts.duplicates == {"clicks": 2} and not again.counts.applied
    assert stores.users[alice.encode()].max_ts == NOW - 1000
    # The crash may have come between the state write and the publish: scores go out again.
    assert churn_of(again)[alice]["ts"] == churn_of(first)[alice]["ts"]
    assert again.commit == {("clicks", 2): 2}


def test_an_event_ahead_of_a_topic_with_more_to_read_is_held_and_not_committed(models) -> None:
    feed, clock, stores = Feed(), Clock(), Stores.in_memory()
    pipeline = make(models, stores, clock)
    alice = user_on(0)
    behind = {"clicks"}  # the clicks partition has more on the broker

    def caught_up(topic: str, partition: int) -> bool:
        return topic not in behind

    order = feed.order(alice, NOW - 1000, "o1")
    out = run(pipeline, [order], caught_up)
    assert pipeline.held == 1 and out.counts.held == 1
    assert not out.counts.applied and not out.writes and not out.records
    assert out.commit == {("orders", 0): 0}  # the held order's offset is not committed
    # An earlier click arrives: it is applied, the order still waits for clicks to catch up.
    clock.advance(1)
    out = run(pipeline, [feed.click(alice, NOW - 5000, "c1")], caught_up)
    assert out.counts.applied == {"clicks": 1} and pipeline.held == 1
    assert out.commit == {("clicks", 0): 1}
    # Clicks caught up: the release timer's empty batch applies the order after the click.
    behind.clear()
    clock.advance(0.2)
    out = run(pipeline, [], caught_up)
    assert out.counts.applied == {"orders": 1} and pipeline.held == 0
    assert out.commit == {("orders", 0): 1}
    state = stores.users[alice.encode()]
    assert state.max_ts == NOW - 1000 and not out.counts.rejected  # not late: in order


def test_a_partition_of_unknown_state_holds_only_for_the_max_hold(models) -> None:
    feed, clock, stores = Feed(), Clock(), Stores.in_memory()
    pipeline = make(models, stores, clock)
    alice = user_on(1)
    out = run(pipeline, [feed.click(alice, NOW - 1000, "c1")], lambda topic, p: None)
    assert pipeline.held == 1 and not out.counts.applied
    clock.advance(5.1)
    out = run(pipeline, [], lambda topic, p: None)
    assert out.counts.applied == {"clicks": 1} and pipeline.held == 0


def test_a_clock_tick_rescores_idle_users_of_its_partition_once(models) -> None:
    feed, clock, stores = Feed(), Clock(), Stores.in_memory()
    pipeline = make(models, stores, clock)
    idle, busy, elsewhere = user_on(3, 0), user_on(3, 1), user_on(0)
    run(
        pipeline,
        [
            feed.click(idle, NOW - 10 * DAY, "i1"),
            feed.click(busy, NOW - 2 * DAY, "b1"),
            feed.click(elsewhere, NOW - 10 * DAY, "e1"),
        ],
    )
    at = NOW - 5 * DAY
    out = run(pipeline, [feed.tick(3, at)])
    assert out.ticks == [(3, at, 1)]
    assert set(churn_of(out)) == {idle}  # the busy one moved since; other partitions wait
    assert churn_of(out)[idle]["ts"] == at
    assert stores.clock[b"3"] == at
    assert out.commit == {("clock", 3): 1}
    # The clock never goes back: an older or equal tick re-scores nobody.
    out = run(pipeline, [feed.tick(3, at - DAY), feed.tick(3, at)])
    assert out.ticks == [] and not out.records and stores.clock[b"3"] == at
    # A later pipeline (a restart) knows the partition's users from the table.
    later = run(make(models, stores, clock), [feed.tick(3, NOW - DAY)])
    assert later.ticks == [(3, NOW - DAY, 2)]


def test_a_tick_in_chunks_writes_what_one_chunk_would(models) -> None:
    """A tick packs its writes after each chunk (so 100,000 users are not held decoded); the
    states it leaves and the scores it publishes are those of an unchunked tick."""
    results = []
    for chunk in (1000, 2):
        feed, clock, stores = Feed(), Clock(), Stores.in_memory()
        pipeline = Pipeline(
            PipelineConfig(partitions=PARTITIONS, align_max_hold_s=5.0, idle_chunk=chunk),
            models,
            stores,
            wall=lambda clock=clock: clock.wall_s,
            monotonic=lambda clock=clock: clock.mono,
        )
        users = [user_on(2, n) for n in range(5)]
        run(pipeline, [feed.order(u, NOW - (10 + n) * DAY, f"o{n}") for n, u in enumerate(users)])
        out = run(pipeline, [feed.tick(2, NOW - 2 * DAY)])
        assert out.ticks == [(2, NOW - 2 * DAY, 5)]
        results.append((churn_of(out), {k: v.to_bytes() for k, v in stores.scores.items()}))
    assert results[0] == results[1]
    assert all(v["ts"] == NOW - 2 * DAY for v in results[1][0].values())


def test_a_forged_tick_is_dead_lettered_and_moves_no_clock(models) -> None:
    feed, clock, stores = Feed(), Clock(), Stores.in_memory()
    pipeline = make(models, stores, clock)
    out = run(pipeline, [feed.tick(0, NOW + 30 * DAY), feed.record("clock", 0, b"{}")])
    assert out.counts.rejected == {("clock", "future_timestamp"): 1, ("clock", "missing_field"): 1}
    assert topics_of(out) == ["events.dlq", "events.dlq"]
    assert not stores.clock and out.commit == {("clock", 0): 2}


def test_bad_and_misrouted_records_are_handled_at_once_and_committed(models) -> None:
    feed, clock, stores = Feed(), Clock(), Stores.in_memory()
    pipeline = make(models, stores, clock)
    alice = user_on(2)
    garbage = feed.record("clicks", 0, b"not json")
    misrouted = feed.click(alice, NOW - 1000, "a1", partition=0)
    out = run(pipeline, [garbage, misrouted])
    dlq, rekeyed = out.records
    assert dlq.topic == "events.dlq" and orjson.loads(dlq.value)["reason"] == "not_json"
    assert (rekeyed.topic, rekeyed.key, rekeyed.partition) == ("clicks", alice.encode(), 2)
    assert rekeyed.value == misrouted.value
    assert out.counts.misrouted == {"clicks": 1} and out.counts.rejected == {
        ("clicks", "not_json"): 1
    }
    assert out.counts.produced == {"events.dlq": 1}
    assert out.commit == {("clicks", 0): 2} and not stores.users


def test_a_revoked_partition_drops_what_it_holds_for_its_next_owner(models) -> None:
    feed, clock, stores = Feed(), Clock(), Stores.in_memory()
    pipeline = make(models, stores, clock)
    alice = user_on(1)
    run(pipeline, [feed.order(alice, NOW - 1000, "o1")], lambda topic, p: topic != "clicks")
    assert pipeline.held == 1
    assert pipeline.forget({1}) == 1
    assert pipeline.held == 0
    out = run(pipeline, [])
    assert not out.records and not out.writes and not out.commit


def test_offline_evaluation_runs_this_pipeline(models, monkeypatch) -> None:
    from offline_train import online_eval
    from stream.contract.events import Click

    calls: list[int] = []
    original = Pipeline.process

    async def counted(self: Pipeline, records: Any, *args: Any) -> BatchOutput:
        calls.append(len(records))
        return await original(self, records, *args)

    monkeypatch.setattr(Pipeline, "process", counted)
    events = [Click(f"e{i}", f"u{i % 3}", NOW + i * 60_000, "i1", "books", 10.0) for i in range(7)]
    run_ = online_eval.evaluate_log(events, models, batch_size=3, clock_at=[NOW + 30 * DAY])
    assert calls == [3, 3, 1, 1]  # three batches of events, then the tick alone
    assert {r.user_id for r in run_.records} == {"u0", "u1", "u2"}
    assert [r.ts for r in run_.records[-3:]] == [NOW + 30 * DAY] * 3  # re-scored at the tick


@pytest.mark.parametrize("every_days", [7, 0])
def test_an_idle_users_labels_rescore_them_at_most_once_per_refresh_period(
    models, every_days: int
) -> None:
    """Each prediction left pending re-scores an idle user when its label falls due, and that
    re-score leaves a new one: without a bound, a user idle after k orders would be re-scored
    k times per horizon. Within ``idle_rescore_every_ms`` of their last churn score, a due
    label is learned and leaves their state, and nothing is published."""
    feed, clock, stores = Feed(), Clock(), Stores.in_memory()
    scoring = ScoringConfig(idle_rescore_every_ms=every_days * DAY)
    pipeline = Pipeline(
        PipelineConfig(partitions=PARTITIONS, align_max_hold_s=5.0, scoring=scoring),
        models,
        stores,
        wall=lambda: clock.wall_s,
        monotonic=lambda: clock.mono,
    )
    idle, other = user_on(1, 0), user_on(1, 1)
    start = NOW - 60 * DAY
    # Three predictions in three label periods, falling due at days 30, 34 and 38.
    for day in (0, 4, 8):  # a user is scored once per batch
        run(pipeline, [feed.order(idle, start + day * DAY, f"i{day}")])

    def stream_time_to(day: int) -> tuple[dict[str, dict[str, Any]], int, int]:
        """Another user's order moves the partition's event time; returns what was published
        for the idle user, the churn labels delivered and their predictions still pending."""
        out = run(pipeline, [feed.order(other, start + day * DAY + 1, f"o{day}")])
        pending = stores.scores[idle.encode()].churn_pending
        return churn_of(out), out.counts.labels.get("churn", 0), len(pending)

    published, labels, pending = stream_time_to(30)
    assert published[idle]["trigger"] == "clock" and published[idle]["ts"] == start + 30 * DAY + 1
    assert labels == 1 and pending == 3  # the day-0 label out, the re-score's prediction in
    published, labels, pending = stream_time_to(34)  # 4 days after that score
    assert labels == 1
    if every_days:
        assert idle not in published and pending == 2
    else:
        assert published[idle]["ts"] == start + 34 * DAY + 1 and pending == 3
    published, labels, pending = stream_time_to(38)  # 8 days after the first re-score
    assert labels == 1 and published[idle]["ts"] == start + 38 * DAY + 1
