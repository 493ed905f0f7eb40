"""The worker's timers and rebalance hooks, each a few lines around the worker's own methods.

Timers: release what alignment holds when no batch comes, refresh gauges, re-read partitions
whose last messages never arrived, fetch again partitions Faust left paused, watch the model
directory. Hooks: note where newly assigned partitions start, forget revoked ones.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from faust.types import TP

from stream.contract.partitioning import owner_partition
from stream.kafka.compat import ends_if_cancelled_from_outside
from stream.kafka.consumer import LOST_TAIL_QUIET_S, STUCK_PARTITION_S
from stream.kafka.offsets import LogReset
from stream.worker.model_swap import swap_models

if TYPE_CHECKING:
    from stream.worker.app import ShopscoreApp

__all__ = ["register_timers", "survives_cancellation"]

log = logging.getLogger("shopscore")

#: How long events may be held for alignment before a warning says what holds them.
STALLED_ALIGNMENT_S = 30.0


def survives_cancellation(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """``fn``, except that an operation it awaits being cancelled from outside ends this tick
    only: Faust ends a timer for good when its body raises ``CancelledError``
    (``stream.kafka.compat.ends_if_cancelled_from_outside``)."""

    @functools.wraps(fn)
    async def tick() -> None:
        with ends_if_cancelled_from_outside(f"a tick of {fn.__name__}"):
            await fn()

    return tick


def register_timers(worker: ShopscoreApp) -> None:
    """Register the timers and rebalance hooks of ``worker`` on its Faust app."""
    metrics = worker.metrics

    def timer(interval: float, name: str) -> Callable[[Callable[[], Awaitable[None]]], Any]:
        return lambda fn: worker.app.timer(interval, name=name)(survives_cancellation(fn))

    async def release_held() -> None:
        # Events held for alignment are released even when no new batch arrives.
        if worker.pipeline.held and worker.feed.stream is not None:
            try:
                await worker.release_held()
            except Exception as exc:
                worker._fatal(exc)
                raise

    timer(0.2, name="shopscore.release_held")(release_held)

    async def warn_stalled_alignment() -> None:
        # Events held for a topic the broker has more of wait for it however long it takes;
        # when that is minutes, the operator must hear which partition and why.
        stalled = worker.pipeline.aligner.stalled(
            worker.feed.caught_up, time.monotonic(), STALLED_ALIGNMENT_S
        )
        for partition, behind, held in stalled:
            log.warning(
                "partition %d: %d events held for event-time alignment for over %.0f s, "
                "waiting for %s",
                partition,
                held,
                STALLED_ALIGNMENT_S,
                "; ".join(worker.feed.describe(t, partition) for t in behind) or "nothing",
            )

    timer(STALLED_ALIGNMENT_S, name="shopscore.warn_stalled_alignment")(warn_stalled_alignment)

    @worker.app.on_partitions_assigned.connect
    async def note_log_starts(app: Any, assigned: set[TP], **kwargs: Any) -> None:
        # Decoded users of partitions kept stay cached (recovery replaces what it applies);
        # those of partitions gone are dropped.
        owned = {tp.partition for tp in assigned}
        partitions = worker.settings.partitions
        for decoded in (worker.user_states, worker.score_states):
            decoded.retain(lambda key: owner_partition(key.decode(), partitions) in owned)
        await worker.feed.note_log_starts(assigned)

    @worker.app.on_partitions_revoked.connect
    async def forget_revoked(app: Any, revoked: set[TP], **kwargs: Any) -> None:
        # Held events of revoked partitions are not applied here: they are uncommitted,
        # so their new owner reads them again.
        dropped = worker.pipeline.forget({tp.partition for tp in revoked})
        if worker.intake is not None:
            dropped += worker.intake.discard(revoked)
        worker.feed.forget(revoked)
        if dropped:
            log.info("revoked partitions: %d held events left to their new owner", dropped)

    async def refresh_gauges() -> None:
        metrics.users.set(len(worker.users))
        for name, decoded in (("users", worker.user_states), ("scores", worker.score_states)):
            metrics.cached.labels(name).set(decoded.cached)
            metrics.decodes.labels(name).inc(decoded.take_misses())
        metrics.ready.set(1 if worker.ready()[0] else 0)
        monitor = worker.app.monitor
        ends = getattr(monitor, "tp_end_offsets", None) or {}
        reads = getattr(monitor, "tp_read_offsets", None) or {}
        committed = getattr(monitor, "tp_committed_offsets", None) or {}
        lag: dict[tuple[str, str], int] = {}
        for tp in worker.app.consumer.assignment():
            name = worker._contract_name.get(tp.topic)
            if name is None or tp not in ends:
                continue
            # After a restart nothing may be read yet: the committed offset is the position.
            position = max(reads.get(tp, -1) + 1, committed.get(tp, 0))
            lag[name, str(tp.partition)] = max(0, ends[tp] - position)
        # Only assigned partitions: a partition moved to another worker is reported there,
        # so sum(shopscore_consumer_lag_messages) over all workers counts each once.
        metrics.lag.clear()
        for (name, partition), value in lag.items():
            metrics.lag.labels(name, partition).set(value)

    timer(1.0, name="shopscore.refresh_gauges")(refresh_gauges)

    async def reread_lost_tails() -> None:
        await worker.feed.reread_lost_tails(LOST_TAIL_QUIET_S)

    timer(1.0, name="shopscore.reread_lost_tails")(reread_lost_tails)

    async def check_log_ends() -> None:
        if worker.failed:  # stopping already
            return
        try:
            await worker.feed.check_log_ends()
        except LogReset as exc:
            worker._fatal(exc)

    timer(1.0, name="shopscore.check_log_ends")(check_log_ends)

    async def resume_stuck_partitions() -> None:
        worker.feed.resume_stuck_partitions(STUCK_PARTITION_S)

    timer(1.0, name="shopscore.resume_stuck_partitions")(resume_stuck_partitions)

    async def watch_models() -> None:
        await swap_models(worker.models, worker.pipeline.scorer, worker.lock, worker.metrics)

    if worker.settings.model_dir is not None:
        timer(worker.settings.model_poll_ms / 1000, name="shopscore.models")(watch_models)
