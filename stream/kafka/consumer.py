"""The worker's input partitions as Faust's consumer delivers them, with its gaps closed.

Everything the worker needs of the consumer that Faust does not offer publicly is here, so a
Faust or aiokafka upgrade means reading this module (and ``compat``), not the worker:

- offset continuity: a message Faust let vanish is noticed at the next offset, and the
  partition is sought back to it (``stream.kafka.offsets``); a message lost at a partition's
  end is noticed once nothing arrives at all, and so is a partition whose whole tail never
  reached the agent after an assignment (``reread_lost_tails``); messages of a revoked
  partition fetched before the revocation are fenced off (``forget``); a log that restarts
  below what was delivered (the broker lost it) raises ``LogReset`` (``check_log_ends``);
- whether a partition is caught up, for event-time alignment, and where its reading starts
  (``stream.kafka.positions``: aiokafka's fetch state, the committed offset, the log start);
- stuck partitions: Faust's lost buffer-drop signal (``resume_stuck_partitions``);
- acks in offset order up to what the pipeline has finished with (``ack``), so Faust never
  commits past a held message;
- the current event a table write is attributed to (``acting_as``).
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from faust.streams import _current_event
from faust.types import TP, EventT

from stream.contract.topics import CLOCK, INPUT_TOPICS
from stream.kafka.compat import ends_if_cancelled_from_outside, first_offsets
from stream.kafka.offsets import OffsetContinuity, Verdict, check_log_end
from stream.kafka.positions import PartitionPositions
from stream.pipeline.records import InputRecord

__all__ = ["LOST_TAIL_QUIET_S", "STUCK_PARTITION_S", "InputFeed", "acting_as"]

log = logging.getLogger("shopscore")

#: How long the agent may receive nothing before the partitions whose fetch position is past
#: its offsets are read again from the first missing one (``InputFeed.lost_tails``).
LOST_TAIL_QUIET_S = 10.0

#: How long Faust may leave a partition unfetched because its stream buffer was full before
#: it is fetched again (``resume_stuck_partitions``): a drained buffer resumes it in far less.
STUCK_PARTITION_S = 5.0


@contextlib.contextmanager
def acting_as(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event while writing a table key.

    Faust picks the changelog partition (and the RocksDB partition store) from the current
    event. In a micro-batch the current event is the batch's last, which may be of another
    partition, so each key's write is attributed to a message of the key's own partition.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def _forget_offsets(consumer: Any, tp: TP, end: int | None) -> None:
    """Forget what Faust keeps of ``tp``'s offsets, as its revocation of the partition does:
    it is then read as if newly assigned."""
    log.warning(
        "%s: the committed offset %s is past the log's end %s (the broker lost its data, or "
        "the topic was recreated); reading the partition from its start",
        tp,
        consumer._committed_offset.get(tp),
        end,
    )
    for kept in (consumer._read_offset, consumer._committed_offset, consumer._acked,
                 consumer._acked_index, consumer._gap):  # fmt: skip
        kept.pop(tp, None)


async def _seek(consumer: Any, offsets: Mapping[TP, int]) -> None:
    """Seek and wait; the wait cancelled from outside leaves the partitions to the next check
    (``reread_lost_tails``, the next batch's gap), not an error."""
    with ends_if_cancelled_from_outside(f"seeking {sorted(offsets)}"):
        await consumer.seek_wait(offsets)


class InputFeed:
    """Turns the agent's batches into pipeline records, and the pipeline's safe offsets into
    acks; knows per input partition what was delivered (``positions``: where it stands)."""

    def __init__(
        self, app: Any, topic: Callable[[str], str], on_rewind: Callable[[str], None]
    ) -> None:
        self.app = app
        #: Prefixed topic name -> contract name, for the inputs and the clock.
        self._contract = {topic(name): name for name in (*INPUT_TOPICS, CLOCK)}
        self._topic = topic
        self._on_rewind = on_rewind
        self.continuity = OffsetContinuity()
        self.positions = PartitionPositions(app, topic, self.continuity)
        self.caught_up = self.positions.caught_up
        self.describe = self.positions.describe
        self.stream: Any = None
        self._ack_queues: defaultdict[TP, deque[EventT]] = defaultdict(deque)
        #: The latest taken event of each partition: table writes are attributed to it.
        self._partition_event: dict[int, EventT] = {}
        #: When the agent last took a message, or a partition was assigned or sought back.
        self._last_delivery = time.monotonic()
        self._buffered_since: dict[TP, float] = {}
        #: One past the highest offset taken from each partition in an earlier assignment:
        #: a log now ending below it was lost by the broker (``_check_log_end``).
        self._taken_before: dict[TP, int] = {}

    # -- in: a batch of events ----------------------------------------------------------------

    def take(self, events: Sequence[EventT], now: float) -> tuple[list[InputRecord], dict[TP, int]]:
        """The records of ``events`` that continue their partitions' offsets, and the
        partitions to seek back to the first offset they skipped (``rewind``)."""
        records: list[InputRecord] = []
        rewind: dict[TP, int] = {}
        contract = self._contract
        continuity = self.continuity
        committed_offsets = self.app.consumer._committed_offset
        fetched: dict[TP, float] = {}  # one fetch-state lookup per partition and batch
        fenced = 0
        # Where a fenced partition restarts without a commit: looked up only while one is.
        restart = self.positions.restart_without_commit if continuity.fencing else None
        for event in events:
            message = event.message
            # Every message is acked in offset order (``ack``), never by the stream
            # (``stream.kafka.intake``). A message that is not taken is never acked: its
            # in-order twin is.
            tp = message.tp
            start = restart(tp) if restart is not None and continuity.is_fenced(tp) else None
            verdict = continuity.check(
                tp, message.offset, committed_offsets.get(tp), now=now, start=start
            )
            if verdict is not Verdict.TAKE:
                if verdict is Verdict.REWIND:
                    expected = continuity.expected(tp)
                    if expected is not None:
                        rewind[tp] = expected
                elif verdict is Verdict.FENCED:
                    fenced += 1
                continue
            self._ack_queues[tp].append(event)
            self._partition_event[message.partition] = event
            fetched_ms = fetched.get(tp)
            if fetched_ms is None:
                fetched_ms = fetched[tp] = self.positions.fetched_ms(tp)
            records.append(
                InputRecord(
                    contract[message.topic],
                    message.partition,
                    message.offset,
                    message.key,
                    message.value,
                    message.timestamp,
                    fetched_ms,
                )
            )
        if records:
            self._last_delivery = now
        if fenced:
            log.info(
                "%d messages of partitions revoked by a rebalance skipped until reading them "
                "again from the committed offsets",
                fenced,
            )
        return records, rewind

    def _check_log_end(self, tp: TP) -> bool:
        """Raise ``LogReset`` if ``tp``'s log now ends below offsets this process took; False
        if only the offset reading resumes from is past its end
        (``stream.kafka.offsets.check_log_end``).

        A re-read after a seek also delivers offsets below the expected one, but from an intact
        log, whose end (a fetch's high watermark, right on every broker) is past them."""
        consumer = self.app.consumer
        taken = max(
            (
                o
                for o in (self.continuity.expected(tp), self._taken_before.get(tp))
                if o is not None
            ),
            default=None,
        )
        resume = max(
            (
                o
                for o in (consumer._committed_offset.get(tp), consumer._read_offset.get(tp))
                if o is not None
            ),
            default=None,
        )
        return check_log_end(
            tp, getattr(self.positions.fetch_state(tp), "highwater", None), taken, resume
        )

    async def check_log_ends(self) -> None:
        """Check every assigned input partition's log end (``_check_log_end``), and read a
        partition whose committed offset is past its end from its start.

        On a timer, not as records arrive: Faust drops every record below its read offset
        (the committed one after an assignment) before the agent sees it, and aiokafka has by
        then moved past them to the log's end. Seen on Apache Kafka brought back on an empty
        directory: the worker stayed ready and applied nothing."""
        consumer = self.app.consumer
        past = [
            tp
            for tp in consumer.assignment()
            if tp.topic in self._contract and not self._check_log_end(tp)
        ]
        if not past:
            return
        for tp in past:
            _forget_offsets(
                consumer, tp, getattr(self.positions.fetch_state(tp), "highwater", None)
            )
        try:
            starts = await consumer.earliest_offsets(*past)
        except Exception as exc:  # an offset out of range resets to the start anyway
            log.warning("could not read the partitions' first offsets (%s); seeking to 0", exc)
            starts = {}
        await _seek(self.app.consumer, {tp: starts.get(tp) or 0 for tp in past})

    # -- out: acks and table writes -------------------------------------------------------------

    async def ack(self, commit: Mapping[tuple[str, int], int]) -> None:
        """Ack each partition's messages below the offset the pipeline says is safe.

        Faust commits the highest contiguous acked offset, but it does not see a gap at the
        head of a partition's acked offsets (none is checked before the first commit, and a
        single missing offset is missed later), so acking a held message's successors first
        could commit past it. Acking in order, up to the safe offset, keeps every held
        message uncommitted. Faust commits an acked offset only after the producer has
        flushed (``stream.kafka.compat``): the batch's writes and records come first.
        """
        if self.stream is None:
            return
        ack = self.stream.ack
        for (topic, partition), offset in commit.items():
            queue = self._ack_queues.get(TP(self._topic(topic), partition))
            while queue and queue[0].message.offset < offset:
                await ack(queue.popleft())

    def acting_for(self, partition: int) -> contextlib.AbstractContextManager[None]:
        """Attribute table writes to ``partition`` (``acting_as`` its latest taken event)."""
        return acting_as(self._partition_event[partition])

    # -- repairs ----------------------------------------------------------------------------

    async def rewind_then(
        self, records: list[InputRecord], rewind: dict[TP, int]
    ) -> list[InputRecord]:
        """``rewind``, then the ``records`` still this worker's to process: a rebalance may
        revoke partitions while the seek waits, and records of a revoked partition are its next
        owner's to read again from the committed offset (``forget``), even when that owner is
        this worker."""
        if not rewind:
            return records
        await self.rewind(rewind)
        fenced, topic = self.continuity.is_fenced, self._topic
        return [r for r in records if not fenced(TP(topic(r.topic), r.partition))]

    async def rewind(self, rewind: dict[TP, int]) -> None:
        """Seek partitions back to offsets that were skipped before reaching the agent, after
        asking the broker which of them exist (a real gap is accepted, not re-read forever)."""
        consumer = self.app.consumer._thread._ensure_consumer()
        first: dict[TP, int] = {}  # unknown: read again from the expected offsets
        with ends_if_cancelled_from_outside("the offset probe"):
            try:
                first = await first_offsets(consumer, rewind)
            except Exception as exc:  # broker unreachable: seek anyway, probed again later
                log.warning(
                    "offset probe failed (%s); reading again from the expected offsets", exc
                )
        now = time.monotonic()
        for tp, offset in list(rewind.items()):
            found = first.get(tp)
            if found is None:
                # No record at or after it came back (the broker is slow, or the partition ends
                # in offsets that hold none): read again from it, no gap is assumed.
                log.info("%s: reading again from offset %d", tp, offset)
            elif found > offset:
                log.warning(
                    "%s: offsets %d..%d are not on the broker (compaction or transaction "
                    "markers); going on from %d",
                    tp,
                    offset,
                    found - 1,
                    found,
                )
                self.continuity.accept(tp, found)
                rewind[tp] = found
            else:
                log.warning(
                    "%s: offset %d never reached the agent; reading again from it", tp, offset
                )
                self._on_rewind(self._contract.get(tp.topic, CLOCK))
        self._last_delivery = now
        # Partitions revoked while the broker was asked are no longer this worker's to seek
        # (aiokafka refuses a seek of an unassigned partition). One assigned back meanwhile may
        # be: it is fenced, so a seek past its committed offset is a gap read again from there.
        assigned = self.app.consumer.assignment()
        rewind = {tp: offset for tp, offset in rewind.items() if tp in assigned}
        if rewind:
            await _seek(self.app.consumer, rewind)

    def lost_tails(self, now: float, quiet_s: float = LOST_TAIL_QUIET_S) -> dict[TP, int]:
        """Once the agent has received nothing at all for ``quiet_s``, the partitions whose
        fetch position is past what it got: a message lost at a partition's end leaves no
        later offset to reveal the gap (and would hold back event-time alignment for good).
        While anything still arrives, fetched messages may just be queued inside Faust behind
        a backlog (seen: partitions silent for 10 s in a 2-million-event replay).

        A partition nothing reached since its assignment counts from where reading started
        (``_restart``): Faust's recovery can fetch a partition's whole tail and clear it from its
        queues before the agent sees any of it, and then nothing else would ever read it again
        (seen after a rebalance: one partition number's events held for alignment for good)."""
        rewind: dict[TP, int] = {}
        if now - self._last_delivery < quiet_s:
            return rewind
        for tp in self.app.consumer.assignment():
            if tp.topic not in self._contract:
                continue
            expected = self.continuity.expected(tp)
            if expected is None:
                expected = self.positions.restart(tp)
            if expected is None:
                continue
            state = self.positions.fetch_state(tp)
            if state is None or not state.has_valid_position:
                continue
            if state.position > expected:
                rewind[tp] = expected
        return rewind

    async def reread_lost_tails(self, quiet_s: float = LOST_TAIL_QUIET_S) -> None:
        rewind = self.lost_tails(time.monotonic(), quiet_s)
        if rewind:
            await self.rewind(rewind)

    def resume_stuck_partitions(self, after_s: float = STUCK_PARTITION_S) -> None:
        """Faust stops fetching a partition whose messages fill the stream buffer and fetches
        it again when its queue signals the pressure dropped; that signal can be lost
        (faust-streaming issues 175 and 640), and the partition is then never fetched again:
        seen as two partitions silent for 5 minutes in a long replay, with every other
        partition held back behind them for event-time alignment."""
        consumer = self.app.consumer
        buffered = set(getattr(consumer, "_buffered_partitions", ()))
        now = time.monotonic()
        for tp in list(self._buffered_since):
            if tp not in buffered:
                del self._buffered_since[tp]
        for tp in buffered:
            since = self._buffered_since.setdefault(tp, now)
            if now - since >= after_s:
                log.info(
                    "%s: fetching again after %.0f s paused for a full buffer", tp, now - since
                )
                consumer.on_buffer_drop(tp)
                del self._buffered_since[tp]

    # -- rebalances -------------------------------------------------------------------------

    async def note_log_starts(self, assigned: set[TP]) -> None:
        """Where newly assigned partitions with no committed offset start (``caught_up``, and
        the restart of a partition assigned again: ``take``)."""
        self._last_delivery = time.monotonic()  # quiet counts from the assignment
        await self.positions.note_log_starts(tp for tp in assigned if tp.topic in self._contract)

    def forget(self, revoked: set[TP]) -> None:
        """Revoked partitions: their unacked messages are their new owner's to read again.
        Messages of theirs still in Faust's queues or in a batch are fenced off
        (``OffsetContinuity.revoke``): they were fetched before the revocation."""
        for tp in revoked:
            expected = self.continuity.expected(tp)
            if expected is not None:
                self._taken_before[tp] = max(expected, self._taken_before.get(tp, 0))
        self.continuity.revoke(tp for tp in revoked if tp.topic in self._contract)
        for tp in revoked:
            self._ack_queues.pop(tp, None)
        self.positions.forget(revoked)
