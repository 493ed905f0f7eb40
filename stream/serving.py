"""The worker's side of scoring: learners per partition, model hot-swap, and what a scored
batch turns into (table writes, output messages, metrics).

``stream.scoring`` is pure; this module is where it meets Faust. The ingest agent and the clock
agent both score through ``Serving.score``, one batch at a time (a lock), so the learners and a
user's scoring state never see two batches interleaved across an ``await``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stream import chunked
from stream.errors import CorruptState, ModelError
from stream.metrics import Metrics
from stream.models.registry import MODEL_NAMES, Model, load_models
from stream.scoring.engine import ScoreFailure, Scorer, ScoreResult, UserInput
from stream.scoring.pending import DueLabels
from stream.scoring.state import Learners, UserScores
from stream.settings import Settings

__all__ = ["FailureLog", "ModelWatcher", "Serving"]

log = logging.getLogger("shopscore")

#: Learners are written to their changelog at most this often per partition.
CHECKPOINT_EVERY_S = 5.0


class FailureLog:
    """Logs users whose scoring failed without flooding: one line per batch with failures,
    naming a few users (stage and exception), at most one line per ``every_s`` (the batches in
    between are summed up in the next line) and a traceback at most once per
    ``traceback_every_s``. A poisoned user in every batch is a steady trickle, not a flood;
    ``shopscore_scoring_errors_total`` counts every one of them."""

    NAMED = 3

    def __init__(
        self,
        logger: logging.Logger,
        *,
        every_s: float = 10.0,
        traceback_every_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self.traceback_every_s = traceback_every_s
        self._clock = clock
        self._last_line: float | None = None
        self._last_traceback: float | None = None
        self._held_users = 0
        self._held_batches = 0

    def report(self, failures: list[ScoreFailure], batch_size: int) -> None:
        now = self._clock()
        if self._last_line is not None and now - self._last_line < self.every_s:
            self._held_users += len(failures)
            self._held_batches += 1
            return
        named = "; ".join(
            f"{f.user_id[:80]!r} at {f.stage}: {type(f.error).__name__}: {str(f.error)[:200]!r}"
            for f in failures[: self.NAMED]
        )
        more = f" and {len(failures) - self.NAMED} more" if len(failures) > self.NAMED else ""
        held = (
            f" ({self._held_users} more users in {self._held_batches} batches since the last "
            "report)"
            if self._held_batches
            else ""
        )
        trace = self._last_traceback is None or now - self._last_traceback >= self.traceback_every_s
        self.logger.error(
            "scoring failed for %d of %d users of a batch; they get no scores from it, the "
            "others were scored: %s%s%s",
            len(failures),
            batch_size,
            named,
            more,
            held,
            exc_info=failures[0].error if trace else None,
        )
        self._last_line = now
        if trace:
            self._last_traceback = now
        self._held_users = self._held_batches = 0


class ModelWatcher:
    """Notices a new model version in ``SHOPSCORE_MODEL_DIR`` and loads it off the event loop.

    A directory's fingerprint is its manifests' bytes; when it changes, every model is loaded
    and checked (schema hash, sha256, onnxruntime) before any is swapped, so a half-copied or
    mismatched set is refused as a whole and the old models keep serving.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._fingerprint = self._read_fingerprint()

    def _read_fingerprint(self) -> bytes | None:
        if self.directory is None:
            return None
        parts = []
        for name in MODEL_NAMES:
            try:
                parts.append((self.directory / f"{name}.json").read_bytes())
            except OSError:
                parts.append(b"")
        return b"\0".join(parts)

    def changed(self) -> bool:
        fingerprint = self._read_fingerprint()
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        return True


class Serving:
    """Scoring state and services of one worker."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        users: Any,
        scores: Any,
        learners: Any,
        send: Callable[[str, str, bytes], None],
        acting_as: Callable[[int], Any],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.users = users
        self.scores = scores
        self.learners_table = learners
        self._send = send
        self._acting_as = acting_as
        self.scorer = Scorer(load_models(settings.model_dir), settings.scoring_config())
        self.watcher = ModelWatcher(settings.model_dir)
        self._learners: dict[int, Learners] = {}
        self._checkpointed: dict[int, float] = {}
        self._due: dict[int, DueLabels] = {}
        self.lock = asyncio.Lock()
        self.failure_log = FailureLog(log)
        self._publish_model_info()

    # -- learners ---------------------------------------------------------------------------

    def learners_of(self, partition: int) -> Learners:
        """The partition's learners: loaded once from the changelog (strictly, never running
        code, signed with ``state_secret`` when one is set), else fresh. A checkpoint that
        cannot be read (forged, corrupt, unsigned while a secret is set, a chunk missing) is
        counted in ``shopscore_state_records_rejected_total{table="learners"}``, logged with
        its key, and the partition's learners start afresh: never a crash, never code run."""
        learners = self._learners.get(partition)
        if learners is None:
            key = str(partition).encode()
            try:
                stored = chunked.join(self.learners_table.get, key)
                if stored is not None:
                    learners = Learners.from_bytes(stored, self.settings.state_secret)
            except CorruptState as exc:
                self.metrics.state_rejected.labels("learners").inc()
                log.warning(
                    "refusing the learners checkpoint of partition %d (key %r): %s; the "
                    "partition's online learners start afresh",
                    partition,
                    key,
                    str(exc)[:300],
                )
            if learners is None:
                learners = Learners(seed=partition)
            self._learners[partition] = learners
        return learners

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: their learners live on in the changelog for the new owner."""
        for partition in partitions:
            self._learners.pop(partition, None)
            self._due.pop(partition, None)
            self._checkpointed.pop(partition, None)

    def checkpoint(self, partitions: Iterable[int], *, force: bool = False) -> None:
        now = time.monotonic()
        for partition in partitions:
            learners = self._learners.get(partition)
            if learners is None:
                continue
            if not force and now - self._checkpointed.get(partition, 0.0) < CHECKPOINT_EVERY_S:
                continue
            key = str(partition).encode()
            try:
                previous = chunked.header(self.learners_table.get(key))
            except CorruptState:  # a forged header: written over, its chunks are unknown
                previous = None
            generation = 1
            if previous is not None and previous[0] < chunked.MAX_GENERATION:
                generation = previous[0] + 1
            blob = learners.to_bytes(self.settings.state_secret)
            with self._acting_as(partition):
                # Chunked (``stream.chunked``): a partition's learners outgrow one record.
                for chunk_key, value in chunked.split(key, blob, generation):
                    self.learners_table[chunk_key] = value
                if previous:
                    for index in range(previous[1]):
                        self.learners_table.pop(chunked.chunk_key(key, previous[0], index), None)
            self._checkpointed[partition] = now

    # -- scoring ----------------------------------------------------------------------------

    def user_scores(self, user_id: str) -> UserScores:
        stored = self.scores.get(user_id.encode())
        return stored if stored is not None else UserScores()

    async def score(
        self,
        users: list[UserInput],
        *,
        churn_only: bool,
        arrived: dict[str, float] | None = None,
    ) -> ScoreResult:
        """Score ``users`` (one onnxruntime call per model, off the loop), write their scoring
        state, and hand the messages to the producer. ``arrived``: per user, the Kafka
        timestamp (s) of the event that triggered the score, for the end-to-end latency.

        A user whose scoring raises loses only their own scores of this batch: they are in
        ``result.failed``, counted in ``shopscore_scoring_errors_total`` and logged
        (``FailureLog``); every other user is written and published. What still raises here is
        not a user's data (the executor, the producer, a checkpoint)."""
        if not users:
            return ScoreResult()
        scorer = self.scorer
        async with self.lock:
            prepared = scorer.prepare(users, self.learners_of, churn_only)
            loop = asyncio.get_running_loop()
            prepared, inferred = await loop.run_in_executor(None, scorer.infer_isolated, prepared)
            result = scorer.finish(prepared, inferred, self.learners_of)
            failed = {failure.user_id for failure in result.failed}
            for user in result.changed:
                try:
                    with self._acting_as(user.partition):
                        self.scores[user.user_id.encode()] = user.scores
                except Exception as exc:
                    if user.user_id not in failed:
                        failed.add(user.user_id)
                        result.failed.append(
                            ScoreFailure(user.user_id, user.partition, "write", exc, True)
                        )
            metrics = self.metrics
            for name, seconds in inferred.seconds.items():
                metrics.scoring_seconds.labels(name).observe(seconds)
                metrics.scoring_batch_size.labels(name).observe(len(prepared.users))
            produced: dict[str, int] = {}
            for (topic, key, _value), payload in zip(result.messages, result.payloads, strict=True):
                if key in failed:  # its state could not be written: publish nothing of it
                    continue
                self._send(topic, key, payload)
                produced[topic] = produced.get(topic, 0) + 1
            for topic, n in produced.items():
                metrics.produced.labels(topic).inc(n)
            if result.failed:
                metrics.scoring_errors.inc(len(result.failed))
                self.failure_log.report(result.failed, len(users))
            if arrived:
                now = time.time()
                for user in prepared.users:
                    stamp = arrived.get(user.user_id)
                    if stamp is not None and user.user_id not in failed:
                        metrics.end_to_end.observe(max(0.0, now - stamp))
            for learner, partition in result.drifts:
                metrics.drift.labels(learner).inc()
                log.warning(
                    "drift detected in the %s learner of partition %d: the blend shifts toward "
                    "the online learner",
                    learner,
                    partition,
                )
            self._record_due(result)
            self._export_online_metrics(result.partitions)
            self.checkpoint(result.partitions)
        return result

    def _record_due(self, result: ScoreResult) -> None:
        for partition, due_ms, user_id in result.due:
            due = self._due.get(partition)
            if due is not None:  # else rebuilt from the table when first needed
                due.add(due_ms, user_id)

    def due_of(self, partition: int, users: Callable[[], Iterable[str]]) -> DueLabels:
        """The partition's due labels; after a start or an assignment, rebuilt once from the
        scoring states of ``users()`` (the partition's users)."""
        due = self._due.get(partition)
        if due is None:
            due = self._due[partition] = DueLabels()
            horizon = self.scorer.config.churn_horizon_ms
            window = self.scorer.config.offer_window_ms
            for user_id in users():
                scores = self.scores.get(user_id.encode())
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
        self, partition: int, now_ms: int, users: Callable[[], Iterable[str]]
    ) -> int:
        """Stream time reached ``now_ms`` on ``partition``: users whose label fell due and who
        have been idle since are re-scored for churn at ``now_ms`` (which delivers the label,
        publishes their risk as it stands now, and gives the learner idle users to learn from).
        """
        due = self.due_of(partition, users)
        idle = []
        for user_id in due.pop_due(now_ms):
            state = self.users.get(user_id.encode())
            if state is not None and (state.max_ts or 0) < now_ms:
                scores = self.user_scores(user_id)
                idle.append(UserInput(user_id, partition, state, scores, [], now_ms, "clock"))
        await self.score(idle, churn_only=True)
        return len(idle)

    def _export_online_metrics(self, partitions: Iterable[int]) -> None:
        # Rolling metrics are per partition's learner; the gauge shows the latest one updated,
        # labelled by model and metric only (bounded cardinality).
        for partition in partitions:
            learners = self._learners.get(partition)
            if learners is None:
                continue
            for name, value in learners.churn.metrics().items():
                if value == value:  # NaN until both classes were seen
                    self.metrics.online_metric.labels("churn", name).set(value)
            for name, value in learners.interest.metrics().items():
                if value == value:
                    self.metrics.online_metric.labels("interest", name).set(value)
            self.metrics.online_metric.labels("churn", "weight_online").set(
                learners.churn.weight_online
            )

    # -- models -----------------------------------------------------------------------------

    def _publish_model_info(self) -> None:
        for name, model in self.scorer.models.items():
            self.metrics.model.labels(name).info({"version": model.version})

    async def maybe_swap_models(self) -> bool:
        """Load a changed model directory off the loop; swap between batches, or keep serving
        the old models when the new ones are refused."""
        if not self.watcher.changed():
            return False
        loop = asyncio.get_running_loop()
        try:
            models: dict[str, Model] = await loop.run_in_executor(
                None, load_models, self.settings.model_dir
            )
        except ModelError as exc:
            self.metrics.model_rejected.inc()
            log.error("refusing the new models, the current ones keep serving: %s", exc)
            return False
        async with self.lock:  # between batches
            old = self.scorer.models
            self.scorer.models = models
        for name, model in models.items():
            if old.get(name) is None or old[name].version != model.version:
                self.metrics.model_swaps.labels(name).inc()
                log.info(
                    "model %s swapped: %s -> %s",
                    name,
                    old[name].version if name in old else None,
                    model.version,
                )
        self._publish_model_info()
        return True
