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

import orjson

from stream import chunked
from stream.errors import ModelError
from stream.metrics import Metrics
from stream.models.registry import MODEL_NAMES, Model, load_models
from stream.scoring.engine import Scorer, ScoreResult, UserInput
from stream.scoring.pending import DueLabels
from stream.scoring.state import Learners, UserScores
from stream.settings import Settings

__all__ = ["ModelWatcher", "Serving"]

log = logging.getLogger("shopscore")

#: Learners are written to their changelog at most this often per partition.
CHECKPOINT_EVERY_S = 5.0


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
        self._publish_model_info()

    # -- learners ---------------------------------------------------------------------------

    def learners_of(self, partition: int) -> Learners:
        learners = self._learners.get(partition)
        if learners is None:
            stored = chunked.join(self.learners_table.get, str(partition).encode())
            learners = Learners.from_bytes(stored) if stored else Learners(seed=partition)
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
            previous = chunked.header(self.learners_table.get(key))
            generation = previous[0] + 1 if previous else 1
            with self._acting_as(partition):
                # Chunked (``stream.chunked``): a partition's learners outgrow one record.
                for chunk_key, value in chunked.split(key, learners.to_bytes(), generation):
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
        timestamp (s) of the event that triggered the score, for the end-to-end latency."""
        if not users:
            return ScoreResult()
        scorer = self.scorer
        async with self.lock:
            prepared = scorer.prepare(users, self.learners_of, churn_only)
            loop = asyncio.get_running_loop()
            inferred = await loop.run_in_executor(None, scorer.infer, prepared)
            result = scorer.finish(prepared, inferred, self.learners_of)
            for user in users:
                with self._acting_as(user.partition):
                    self.scores[user.user_id.encode()] = user.scores
            metrics = self.metrics
            for name, seconds in inferred.seconds.items():
                metrics.scoring_seconds.labels(name).observe(seconds)
                metrics.scoring_batch_size.labels(name).observe(len(users))
            produced: dict[str, int] = {}
            for topic, key, value in result.messages:
                self._send(topic, key, orjson.dumps(value))
                produced[topic] = produced.get(topic, 0) + 1
            for topic, n in produced.items():
                metrics.produced.labels(topic).inc(n)
            if arrived:
                now = time.time()
                for user in users:
                    stamp = arrived.get(user.user_id)
                    if stamp is not None:
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
