"""The scoring steps of a batch: score the users it touched, deliver the labels stream time
made due, re-score idle users at a clock tick; each turned into records, writes and counts.

``stream.scoring.Scorer`` is the math; this is its orchestration, shared by the worker and
offline evaluation. Inference (one onnxruntime call per model for the whole batch) is handed to
``infer``: the worker runs it in a thread so the event loop keeps heartbeating, offline
evaluation runs it inline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from stream.pipeline.counts import Counts
from stream.pipeline.failures import FailureLog
from stream.pipeline.learners import PartitionLearners
from stream.pipeline.records import BatchOutput, OutputRecord
from stream.pipeline.stores import BatchView
from stream.scoring.engine import Scorer, ScoreResult, UserInput
from stream.scoring.pending import DueLabels
from stream.scoring.state import UserScores

__all__ = ["Infer", "ScoringStep", "run_inline"]

log = logging.getLogger("shopscore")

A = TypeVar("A")
R = TypeVar("R")

#: ``infer(fn, arg)`` runs ``fn(arg)`` (thread-safe, releases the GIL) and returns its result.
Infer = Callable[[Callable[[Any], Any], Any], Awaitable[Any]]


async def run_inline(fn: Callable[[A], R], arg: A) -> R:
    """Run inference on the caller's thread (offline evaluation, tests)."""
    return fn(arg)


class ScoringStep:
    """Scores users of a batch and keeps, per partition, which users have labels falling due."""

    def __init__(
        self,
        scorer: Scorer,
        learners: PartitionLearners,
        *,
        infer: Infer = run_inline,
        wall: Callable[[], float] = time.time,
        failure_log: FailureLog | None = None,
    ) -> None:
        self.scorer = scorer
        self.learners = learners
        self._infer = infer
        self._wall = wall
        self.failure_log = failure_log or FailureLog(log)
        self._due: dict[int, DueLabels] = {}

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._due.pop(partition, None)

    @staticmethod
    def user_scores(view: BatchView, user_id: str) -> UserScores:
        stored = view.get("scores", user_id.encode())
        return stored if stored is not None else UserScores()

    async def score(
        self,
        users: list[UserInput],
        view: BatchView,
        out: BatchOutput,
        *,
        churn_only: bool,
        arrived: dict[str, float] | None = None,
    ) -> ScoreResult:
        """Score ``users`` and write what came of it into ``view`` and ``out``. ``arrived``:
        per user, the Kafka timestamp (s) of the event that triggered the score, for the
        end-to-end latency.

        A user whose scoring raises loses only their own scores of this batch: they are in
        ``result.failed``, counted and logged (``FailureLog``); every other user is written and
        published. What still raises here is not a user's data."""
        if not users:
            return ScoreResult()
        scorer = self.scorer
        learners_of = self.learners.of
        prepared = scorer.prepare(users, learners_of, churn_only)
        prepared, inferred = await self._infer(scorer.infer_isolated, prepared)
        result = scorer.finish(prepared, inferred, learners_of)
        counts = out.counts
        failed = {failure.user_id for failure in result.failed}
        for name, seconds in inferred.seconds.items():
            counts.model_calls.append((name, seconds, len(prepared.users)))
        records = out.records
        produced = counts.produced
        partition_of = {user.user_id: user.partition for user in prepared.users}
        for (topic, key, _value), payload in zip(result.messages, result.payloads, strict=True):
            if key in failed:  # its labels were consumed, but it has no scores to publish
                continue
            records.append(OutputRecord(topic, key.encode(), payload, source=partition_of[key]))
            produced[topic] += 1
        if arrived:
            now = self._wall()
            for user in prepared.users:
                stamp = arrived.get(user.user_id)
                if stamp is not None and user.user_id not in failed:
                    counts.end_to_end_s.append(max(0.0, now - stamp))
        self._record(result, len(users), view, out)
        return result

    def deliver(self, users: list[UserInput], view: BatchView, out: BatchOutput) -> ScoreResult:
        """Deliver the labels that fell due for ``users`` (at their ``at_ms``) without scoring
        them: their scoring states are written, nothing is published."""
        if not users:
            return ScoreResult()
        result = self.scorer.deliver(users, self.learners.of)
        self._record(result, len(users), view, out)
        return result

    def _record(
        self, result: ScoreResult, attempted: int, view: BatchView, out: BatchOutput
    ) -> None:
        """What every scoring step leaves besides its messages: changed scoring states,
        failures, labels and drifts counted, new due labels, learner metrics and checkpoints."""
        counts = out.counts
        for user in result.changed:
            view.put("scores", user.partition, user.user_id.encode(), user.scores)
        if result.failed:
            counts.scoring_errors += len(result.failed)
            self.failure_log.report(result.failed, attempted)
        counts.labels.update(result.labels)
        for learner, partition in result.drifts:
            counts.drifts[learner] += 1
            log.warning(
                "drift detected in the %s learner of partition %d: the blend shifts toward "
                "the online learner",
                learner,
                partition,
            )
        for partition, due_ms, user_id in result.due:
            due = self._due.get(partition)
            if due is not None:  # else rebuilt from the table when first needed
                due.add(due_ms, user_id)
        self._online_metrics(result.partitions, counts)
        self.learners.checkpoint(result.partitions, view)

    def due_of(self, partition: int, users: Iterable[str], view: BatchView) -> DueLabels:
        """The partition's due labels; after a start or an assignment, rebuilt once from the
        scoring states of ``users`` (the partition's users)."""
        due = self._due.get(partition)
        if due is None:
            due = self._due[partition] = DueLabels()
            horizon = self.scorer.config.churn_horizon_ms
            window = self.scorer.config.offer_window_ms
            for user_id in users:
                scores = view.get("scores", user_id.encode())
                if scores is None:
                    continue
                for entry in scores.churn_pending:
                    due.add(
                        int(entry[0] if isinstance(entry, list) else entry.ts) + horizon, user_id
                    )
                if scores.offer_pending is not None:
                    due.add(int(scores.offer_pending["ts"]) + window, user_id)
        return due

    async def deliver_due(
        self,
        partition: int,
        now_ms: int,
        users: Callable[[], Iterable[str]],
        view: BatchView,
        out: BatchOutput,
    ) -> int:
        """Stream time reached ``now_ms`` on ``partition``: the labels that fell due are
        delivered to the learners. A user idle since whose churn score is at least
        ``idle_rescore_every_ms`` old is re-scored for churn at ``now_ms`` (which delivers the
        labels, publishes their risk as it stands now, and leaves a prediction of an idle user
        for the learner); the labels of the others are delivered without a score. Returns how
        many users were re-scored. ``users()`` is only called when the due labels must be
        rebuilt."""
        due = self._due.get(partition)
        if due is None:
            due = self.due_of(partition, users(), view)
        every = self.scorer.config.idle_rescore_every_ms
        rescore: list[UserInput] = []
        labels_only: list[UserInput] = []
        for user_id in due.pop_due(now_ms):
            state = view.get("users", user_id.encode())
            if state is None or (state.max_ts or 0) >= now_ms:
                continue  # scored at their own events in this batch
            scores = self.user_scores(view, user_id)
            user = UserInput(user_id, partition, state, scores, [], now_ms, "clock")
            (rescore if _score_is_older(scores, now_ms, every) else labels_only).append(user)
        self.deliver(labels_only, view, out)
        await self.score(rescore, view, out, churn_only=True)
        return len(rescore)

    async def rescore_idle(
        self,
        partition: int,
        at_ms: int,
        users: Iterable[str],
        view: BatchView,
        out: BatchOutput,
        chunk: int = 1000,
    ) -> int:
        """A clock tick: re-score, for churn at ``at_ms``, every user of ``partition`` whose
        newest event is older (their risk rises while they stay away), ``chunk`` at a time."""
        idle: list[UserInput] = []
        scored = 0
        for user_id in sorted(users):
            state = view.get("users", user_id.encode())
            if state is None or (state.max_ts or 0) >= at_ms:
                continue
            scores = self.user_scores(view, user_id)
            idle.append(UserInput(user_id, partition, state, scores, [], at_ms, "clock"))
            if len(idle) >= chunk:
                await self.score(idle, view, out, churn_only=True)
                # The batch holds every user's new scoring state until it ends: compactly.
                keys = [user.user_id.encode() for user in idle]
                view.pack("scores", keys, UserScores.to_bytes, UserScores.from_bytes)
                scored += len(idle)
                idle = []
        await self.score(idle, view, out, churn_only=True)
        return scored + len(idle)

    def _online_metrics(self, partitions: Iterable[int], counts: Counts) -> None:
        # Rolling metrics are per partition's learner; the gauge shows the latest one updated,
        # labelled by model and metric only (bounded cardinality).
        loaded = self.learners.loaded()
        for partition in partitions:
            learners = loaded.get(partition)
            if learners is None:
                continue
            for name, value in learners.churn.metrics().items():
                if value == value:  # NaN until both classes were seen
                    counts.online["churn", name] = value
            for name, value in learners.interest.metrics().items():
                if value == value:
                    counts.online["interest", name] = value
            counts.online["churn", "weight_online"] = learners.churn.weight_online
            counts.online["churn", "weight_btyd"] = learners.churn.shares(True)[2]


def _score_is_older(scores: UserScores, now_ms: int, age_ms: int) -> bool:
    """Whether the user's last published churn score is at least ``age_ms`` old at ``now_ms``
    (or there is none)."""
    last = scores.latest.get("scores.churn")
    ts = last.get("ts") if isinstance(last, dict) else None
    return not isinstance(ts, int) or now_ms - ts >= age_ms
