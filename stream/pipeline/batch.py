"""One micro-batch of input records in; states, records, counts and safe offsets out.

The steps, in order: clean each record (``stream.pipeline.ingest``: decode, validate, route;
a bad one is dead-lettered, one on the wrong partition re-published to its owner), hold it for
event-time alignment (``stream.pipeline.ordering``), apply what the aligner releases to the
users' states, score every user the batch touched, deliver the labels that stream time made
due, and at a clock tick re-score the users who stayed away. The worker and offline evaluation
both run exactly this (``Pipeline.process``); neither has a copy of the orchestration.

Nothing here imports Faust or a Kafka client: a test drives a batch with plain records and
dict tables, and sees everything it did in the returned ``BatchOutput``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.contract.dlq import dlq_message
from stream.contract.events import INPUT_TOPICS, TOPIC_OF_KIND, Event
from stream.contract.partitioning import owner_partition
from stream.contract.topics import CLOCK, DLQ
from stream.contract.validation import decode_clock
from stream.errors import Rejected
from stream.models.registry import Model
from stream.pipeline.acks import OffsetLedger
from stream.pipeline.ingest import BatchResult, RawMessage, apply_clean, clean_message, dead_letter
from stream.pipeline.learners import CHECKPOINT_EVERY_S, PartitionLearners
from stream.pipeline.ordering import CaughtUp, EventTimeAligner
from stream.pipeline.records import BatchOutput, InputRecord, OutputRecord
from stream.pipeline.scoring import Infer, ScoringStep, run_inline
from stream.pipeline.stores import BatchView, Stores
from stream.scoring.engine import Scorer, ScoringConfig, UserInput
from stream.scoring.state import Learners
from stream.settings import Limits, Settings

__all__ = ["Pipeline", "PipelineConfig"]

log = logging.getLogger("shopscore")

#: Item the aligner holds: (record, its raw message, its clean event) or, for a clock tick,
#: (record, None, the announced event time).
_Held = tuple[InputRecord, "RawMessage | None", "Event | int"]


def _always_caught_up(topic: str, partition: int) -> bool:
    return True


@dataclass(frozen=True)
class PipelineConfig:
    """The knobs of the pipeline; ``from_settings`` gives the worker's."""

    partitions: int = 1
    limits: Limits = field(default_factory=Limits)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    align_max_hold_s: float = 10.0
    state_secret: str | None = None
    #: Refuse events whose ``ts`` is ahead of the wall clock (``Limits.max_future_ms``). Off
    #: offline: an old log replayed has no meaningful "now".
    check_future: bool = True
    #: Score every model at a user's event; False scores churn only (faster offline runs).
    score_all: bool = True
    #: Idle users re-scored per model call at a clock tick.
    idle_chunk: int = 1000
    #: Each partition's learners are checkpointed at most this often (wall time); None: only
    #: once, when first scored (offline runs keep their learners in memory).
    checkpoint_every_s: float | None = CHECKPOINT_EVERY_S
    #: Score a user again whose events were all redelivered: at-least-once, a crash may have
    #: come between writing their state and publishing their scores. With exactly-once the
    #: two commit together, and scoring again would publish the same scoring twice.
    rescore_redelivered: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineConfig:
        return cls(
            partitions=settings.partitions,
            limits=settings.limits,
            scoring=settings.scoring_config(),
            align_max_hold_s=settings.align_max_hold_ms / 1000,
            state_secret=settings.state_secret,
            rescore_redelivered=settings.processing_guarantee != "exactly_once",
        )


class PartitionUsers:
    """The users whose state lives on each partition: built from the users table once, after a
    start or an assignment, then kept up to date as the pipeline touches users."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._users: dict[int, set[str]] = {}

    def of(self, partition: int, view: BatchView) -> set[str]:
        users = self._users.get(partition)
        if users is None:
            users = set()
            for key in [*view.stores.users, *view.written("users")]:
                user_id = key.decode()
                if owner_partition(user_id, self.partitions) == partition:
                    users.add(user_id)
            self._users[partition] = users
        return users

    def add(self, partition: int, user_id: str) -> None:
        users = self._users.get(partition)
        if users is not None:
            users.add(user_id)

    def forget(self, partitions: Sequence[int] | set[int]) -> None:
        for partition in partitions:
            self._users.pop(partition, None)


class Pipeline:
    """The batch pipeline of one worker (or of one offline evaluation).

    It keeps what outlives a batch and is not a table: the records held for alignment, the
    learners of each partition, the due labels, each partition's users, and which offsets are
    handled. Calls must not overlap (the worker serialises them); between two calls the caller
    applies the first one's ``writes`` to ``stores``.
    """

    def __init__(
        self,
        config: PipelineConfig,
        models: dict[str, Model],
        stores: Stores,
        *,
        infer: Infer = run_inline,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        make_learners: Callable[[int], Learners] = Learners,
    ) -> None:
        self.config = config
        self.stores = stores
        self._wall = wall
        self._monotonic = monotonic
        self.scorer = Scorer(models, config.scoring)
        self.learners = PartitionLearners(
            stores.learners,
            config.state_secret,
            every_s=config.checkpoint_every_s,
            monotonic=monotonic,
            make=make_learners,
        )
        self.scoring = ScoringStep(self.scorer, self.learners, infer=infer, wall=wall)
        self.aligner: EventTimeAligner[_Held] = EventTimeAligner(
            INPUT_TOPICS, max_hold_s=config.align_max_hold_s
        )
        self.ledger = OffsetLedger()
        self.users = PartitionUsers(config.partitions)

    @property
    def held(self) -> int:
        return len(self.aligner)

    def owns(self, user_id: str, partition: int) -> bool:
        """Whether Kafka's default partitioner puts ``user_id`` on ``partition``."""
        return owner_partition(user_id, self.config.partitions) == partition

    def forget(self, partitions: set[int]) -> int:
        """Partitions revoked: drop what is held and kept for them (uncommitted, so their new
        owner reads it again); the number of held records dropped."""
        dropped = self.aligner.forget_partitions(partitions)
        self.learners.forget(partitions)
        self.scoring.forget(partitions)
        self.users.forget(partitions)
        self.ledger.forget([(topic, p) for topic in (*INPUT_TOPICS, CLOCK) for p in partitions])
        return len(dropped)

    async def process(
        self, records: Sequence[InputRecord], caught_up: CaughtUp = _always_caught_up
    ) -> BatchOutput:
        """Run one batch (``records`` in offset order per partition, none skipped; an empty
        batch releases what alignment no longer holds back). ``caught_up`` says per input
        partition whether it has been read to its end (``stream.pipeline.ordering``)."""
        now_ms = int(self._wall() * 1000)
        out = BatchOutput()
        view = BatchView(self.stores)
        result = BatchResult()
        commit = set()
        for record in records:
            commit.add((record.topic, record.partition))
            self._receive(record, result, now_ms)
        released = self.aligner.release(caught_up, self._monotonic())
        for record, _raw, _item in released:
            self.ledger.release((record.topic, record.partition), record.offset)
            commit.add((record.topic, record.partition))
        await self._apply(released, result, view, out, now_ms)
        out.writes = view.writes()
        for tp in commit:
            offset = self.ledger.safe(tp)
            if offset is not None:
                out.commit[tp] = offset
        return out

    def _receive(self, record: InputRecord, result: BatchResult, now_ms: int) -> None:
        """Take one record: clean it and hold it for alignment, or dead-letter or re-key it."""
        self.ledger.take((record.topic, record.partition), record.offset)
        raw = RawMessage(record.topic, record.partition, record.offset, record.key, record.value)
        future_ms = now_ms if self.config.check_future else None
        if record.topic == CLOCK:
            try:
                ts = decode_clock(record.value, now_ms=future_ms, limits=self.config.limits)
            except Exception as exc:
                self._reject_tick(raw, exc, result, now_ms)
                return
            item: _Held = (record, None, ts)
        else:
            event = clean_message(
                raw,
                record,
                result,
                now_ms=now_ms,
                limits=self.config.limits,
                owns=self.owns,
                check_future=self.config.check_future,
            )
            if event is None:  # dead-lettered or re-keyed: handled
                return
            ts, item = event.ts, (record, raw, event)
        self.ledger.hold((record.topic, record.partition), record.offset)
        self.aligner.push(
            record.topic,
            record.partition,
            ts=ts,
            item=item,
            now=self._monotonic(),
            fetched_ms=record.fetched_ms,
        )

    @staticmethod
    def _reject_tick(raw: RawMessage, exc: Exception, result: BatchResult, now_ms: int) -> None:
        """A clock message that breaks the clock rules (an event's timestamp bounds) is
        dead-lettered with source topic ``clock`` and counted like a rejected event: the clock
        never moves to a forged time."""
        reason, detail = (
            (exc.reason, exc.detail)
            if isinstance(exc, Rejected)
            else ("processing_error", repr(exc)[:500])
        )
        log.warning(
            "clock message at partition %s offset %s dead-lettered: %s (%s)",
            raw.partition,
            raw.offset,
            reason,
            detail[:200],
        )
        dead_letter(result, raw, reason, detail, now_ms)

    async def _apply(
        self,
        released: list[_Held],
        result: BatchResult,
        view: BatchView,
        out: BatchOutput,
        now_ms: int,
    ) -> None:
        """Apply released events, score, deliver due labels, handle ticks, and count."""
        items = [(record, raw, event) for record, raw, event in released if raw is not None]
        ticks = [(record, ts) for record, raw, ts in released if raw is None]
        apply_clean(
            items,  # type: ignore[arg-type]
            lambda user_id: view.get("users", user_id.encode()),
            result,
            features=self.config.scoring.features,
            now_ms=now_ms,
        )
        for user_id, record in result.touched.items():
            view.put("users", record.partition, user_id.encode(), result.states[user_id])
        await self._score_applied(result, view, out)
        for record, ts in ticks:
            await self._tick(record.partition, ts, view, out)  # type: ignore[arg-type]
        self._publish_rejects(result, out)
        self._count(result, items, out)

    async def _score_applied(self, result: BatchResult, view: BatchView, out: BatchOutput) -> None:
        """Score every user with newly applied events once per batch (their last event is the
        trigger), then deliver the labels that fell due on their partitions."""
        redelivered = result.redelivered if self.config.rescore_redelivered else []
        if not result.applied and not redelivered:
            return
        events: dict[str, list[Event]] = {}
        for event in result.applied:
            events.setdefault(event.user_id, []).append(event)
        # A user whose events were all redelivered (after a crash) is scored again too: the
        # crash may have come between writing the state and publishing the scores.
        last_seen: dict[str, Event] = {}
        for event in redelivered:
            if event.user_id not in events:
                seen = last_seen.get(event.user_id)
                if seen is None or event.ts > seen.ts:
                    last_seen[event.user_id] = event
        users: list[UserInput] = []
        arrived: dict[str, float] = {}
        user_scores = self.scoring.user_scores
        for user_id, applied in events.items():
            record = result.touched[user_id]
            self.users.add(record.partition, user_id)
            applied.sort(key=lambda e: e.ts)
            state = result.states[user_id]
            at_ms = state.max_ts or applied[-1].ts
            scores = user_scores(view, user_id)
            trigger = applied[-1].event_id
            users.append(
                UserInput(user_id, record.partition, state, scores, applied, at_ms, trigger)
            )
            if record.timestamp_s > 0:
                arrived[user_id] = record.timestamp_s
        for user_id, event in last_seen.items():
            record = result.touched[user_id]
            state = result.states[user_id]
            at_ms = state.max_ts or event.ts
            scores = user_scores(view, user_id)
            users.append(
                UserInput(user_id, record.partition, state, scores, [], at_ms, event.event_id)
            )
        await self.scoring.score(
            users, view, out, churn_only=not self.config.score_all, arrived=arrived
        )
        # Stream time moved on: deliver the labels that fell due on each partition (churn
        # horizons and offer windows that ended without an order), also for users who stay
        # away and so never trigger anything themselves.
        stream_time: dict[int, int] = {}
        for user in users:
            stream_time[user.partition] = max(stream_time.get(user.partition, 0), user.at_ms)
        for partition, now in sorted(stream_time.items()):
            await self.scoring.deliver_due(
                partition, now, lambda p=partition: self.users.of(p, view), view, out
            )

    async def _tick(self, partition: int, ts: int, view: BatchView, out: BatchOutput) -> None:
        """A clock tick at ``ts`` on ``partition``: when it moves the partition's clock on, every
        user of the partition who has been idle since is re-scored for churn at ``ts``."""
        key = str(partition).encode()
        if ts <= (view.get("clock", key) or 0):
            return
        view.put("clock", partition, key, ts)
        users = self.users.of(partition, view)
        n = await self.scoring.rescore_idle(
            partition, ts, users, view, out, chunk=self.config.idle_chunk
        )
        out.ticks.append((partition, ts, n))
        log.info("clock %d on partition %d: %d idle users re-scored", ts, partition, n)

    def _publish_rejects(self, result: BatchResult, out: BatchOutput) -> None:
        """Dead letters, and events re-published to the partition that owns their user."""
        for key, record in result.dead_letters:
            dlq_key, dlq_value = dlq_message(key, record)  # bounded: always producible
            out.records.append(OutputRecord(DLQ, dlq_key, dlq_value, source=record["partition"]))
        if result.dead_letters:
            out.counts.produced[DLQ] += len(result.dead_letters)
        for record, user_id in result.misrouted:
            # To the owner partition explicitly: the producer's partitioner does not matter.
            partition = owner_partition(user_id, self.config.partitions)
            out.records.append(
                OutputRecord(
                    record.topic, user_id.encode(), record.value, partition, record.partition
                )
            )
            out.counts.misrouted[record.topic] += 1

    def _count(self, result: BatchResult, items: list[Any], out: BatchOutput) -> None:
        counts = out.counts
        counts.consumed.update(result.consumed)
        counts.rejected.update(result.rejected)
        counts.duplicates.update(result.duplicates)
        for event in result.applied:
            counts.applied[TOPIC_OF_KIND[event.kind]] += 1
        if rejected := self.learners.take_rejected():
            counts.state_rejected["learners"] += rejected
        counts.held = len(self.aligner)
        now_s = self._wall()
        for record, _raw, _event in items:
            if record.timestamp_s > 0:  # the Kafka record timestamp: when the event arrived
                counts.ingest_latency_s.append(max(0.0, now_s - record.timestamp_s))
