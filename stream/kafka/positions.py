"""Where each input partition of the worker stands: aiokafka's fetch state, the group's
committed offset, the log's start, and the next offset the agent expects
(``stream.kafka.offsets.OffsetContinuity``). Event-time alignment asks it whether a partition
is caught up; the feed asks it where reading a partition starts; warnings quote it.

Like ``stream.kafka.consumer``, it reads Faust's and aiokafka's private state, so an upgrade
means reading it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from faust.types import TP

from stream.kafka.offsets import OffsetContinuity

__all__ = ["PartitionPositions"]

log = logging.getLogger("shopscore")


class PartitionPositions:
    """Per input partition: where reading starts, what was fetched, whether it is caught up."""

    def __init__(self, app: Any, topic: Callable[[str], str], continuity: OffsetContinuity) -> None:
        self.app = app
        self._topic = topic
        self.continuity = continuity
        #: The first offset of each assigned partition (read at its assignment).
        self.log_start: dict[TP, int] = {}

    def restart(self, tp: TP) -> int | None:
        """Where reading ``tp`` starts in this assignment: the committed offset, else the log's
        start (None while not known)."""
        committed = self.app.consumer._committed_offset.get(tp)
        return committed if committed is not None else self.restart_without_commit(tp)

    def restart_without_commit(self, tp: TP) -> int | None:
        """Where a partition assigned again restarts if its group has no committed offset (the
        log's start: ``auto.offset.reset`` is earliest); None while the rebalance is still
        running (Faust's seek to the committed offsets may not have happened yet)."""
        if self.app.rebalancing:
            return None
        return self.log_start.get(tp)

    def fetch_state(self, tp: TP) -> Any:
        """aiokafka's fetch state of ``tp`` (position, high watermark, last fetch time)."""
        try:
            consumer = self.app.consumer._thread._ensure_consumer()
            return consumer._subscription.subscription.assignment.state_value(tp)
        except Exception:  # not assigned / consumer restarting
            return None

    def fetched_ms(self, tp: TP) -> float:
        """When the latest fetch of ``tp`` returned: no later than this, its records arrived."""
        state = self.fetch_state(tp)
        stamp = getattr(state, "timestamp", None)
        return float(stamp) if stamp is not None else float("-inf")

    def caught_up(self, topic: str, partition: int) -> bool | float | None:
        """Whether this worker has read everything in ``topic``'s ``partition`` as of its last
        fetch; when it has, the time of that fetch (see ``stream.pipeline.ordering``)."""
        tp = TP(self._topic(topic), partition)
        state = self.fetch_state(tp)
        if state is None:
            return None
        highwater = state.highwater
        if highwater is None or highwater < 0:
            return None
        expected = self.continuity.expected(tp)  # the next offset the agent is to receive
        if expected is not None:
            caught_up = expected >= highwater
        elif (committed := self.app.consumer._committed_offset.get(tp)) is not None:
            # Nothing delivered since the assignment: the agent starts at the committed offset.
            # (Not the fetch position: fetched records may wait in Faust's queues for seconds
            # behind a backlog of other topics, and calling their topic caught up then released
            # those topics' events ahead of them, which then arrived late.)
            caught_up = committed >= highwater
        elif (start := self.log_start.get(tp)) is not None:
            caught_up = start >= highwater  # no commit yet: reading starts at the log's start
        else:
            return None  # where reading starts is not known: the aligner waits a while
        if not caught_up:
            return False
        return float(state.timestamp) if state.timestamp is not None else True

    def describe(self, topic: str, partition: int) -> str:
        """Where an input partition stands, for a warning: what the agent expects next, the
        committed offset, and aiokafka's fetch position and high watermark."""
        tp = TP(self._topic(topic), partition)
        state = self.fetch_state(tp)
        consumer = self.app.consumer
        paused = tp in getattr(consumer, "_paused_partitions", ()) or tp in getattr(
            consumer, "_buffered_partitions", ()
        )
        valid = state is not None and state.has_valid_position
        fenced = " (fenced since a revocation)" if self.continuity.is_fenced(tp) else ""
        return (
            f"{tp.topic}[{partition}]: next offset expected {self.continuity.expected(tp)}{fenced}"
            f", committed {consumer._committed_offset.get(tp)}"
            f", fetch position {state.position if valid else None}"
            f", high watermark {getattr(state, 'highwater', None)}{', paused' if paused else ''}"
        )

    async def note_log_starts(self, assigned: Iterable[TP]) -> None:
        """Where newly assigned partitions with no committed offset start (``caught_up``, and
        the restart of a partition assigned again: ``restart``)."""
        assigned = list(assigned)
        if not assigned:
            return
        try:
            self.log_start.update(await self.app.consumer.earliest_offsets(*assigned))
        except Exception as exc:  # unknown starts only make the aligner wait a while
            log.warning("could not read the input partitions' first offsets: %s", exc)

    def forget(self, revoked: Iterable[TP]) -> None:
        """Revoked partitions: their next assignment reads their log start again."""
        for tp in revoked:
            self.log_start.pop(tp, None)
