"""Per-partition offset continuity: no input message may be skipped unseen.

Faust can let a consumed message vanish before it reaches an agent. After a rebalance its
recovery resumes the partitions, seeks them to their committed offsets, and only then resumes
flow, which clears every stream queue (``clear_on_resume``). Messages fetched in between were
already counted as read (Faust's read offset moved past them), so they are neither processed
nor fetched again; and Faust's commit tolerates a single missing offset after the committed one,
so the next commit passes them. Seen as a worker restarted mid-backlog losing one or two
messages in every partition, for good (``tests/stream/test_recovery.py``).

The agent therefore checks each partition's offsets as they arrive. The next expected offset
is taken; one already seen (a re-read after a seek) is skipped; one beyond a gap is skipped
too, and the partition is sought back to the first missing offset, so the missing messages are
read again. Until they arrive, later offsets (the rest of a fetch made before the seek) are
skipped without seeking again for ``retry_s``, then the seek is repeated. Whether a gap is
real (offsets a compacted topic or transaction markers leave out) is asked of the broker, not
guessed: the agent fetches the first offset at or after the missing one and ``accept``s the
gap up to it.

A revoked partition is fenced until its next assignment says where reading restarts: messages
fetched before the revocation can still be in Faust's queues (they are cleared only when flow
resumes) and in the agent's batch, and the first of them must not set where the partition
continues: taken as the start, it would skip every offset between the committed one and it.
(A worker's partitions are revoked and assigned back to it when its group membership expires,
as after a 30 s broker freeze.)

A log that restarts below offsets already delivered is not a gap but a loss: the broker lost
its data (a node back on an empty directory, a truncated log) or the topic was recreated. Its
new records carry offsets the agent has seen, so they would all be skipped as re-reads; the
feed raises ``LogReset`` instead (``stream.kafka.consumer.InputFeed.take``).
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

__all__ = ["LogReset", "OffsetContinuity", "Verdict", "check_log_end"]


class Verdict(enum.Enum):
    TAKE = "take"
    #: Already delivered: a re-read after a seek. Neither processed nor acked again.
    SEEN = "seen"
    #: Beyond a gap: skipped, and the partition is to be sought back to ``expected``.
    REWIND = "rewind"
    #: Beyond a gap a seek is already reading again: skipped, no new seek.
    WAIT = "wait"
    #: A revoked partition whose restart offset is not known yet: skipped, not acked. It is a
    #: message fetched before the revocation, or one its new assignment reads again after
    #: seeking to the committed offset.
    FENCED = "fenced"


class LogReset(Exception):
    """A partition's log now ends below an offset this worker already processed."""

    def __init__(self, tp: Hashable, expected: int, end: int) -> None:
        self.tp, self.expected, self.end = tp, expected, end
        super().__init__(
            f"{tp}: the broker's log now ends at offset {end}, below offset {expected} that "
            "this worker already processed: the broker lost its data or the topic was "
            "recreated"
        )


def check_log_end(tp: Hashable, end: int | None, taken: int | None, committed: int | None) -> bool:
    """Whether ``tp``'s log ``end`` (a fetch's high watermark) is still past what was done.

    ``taken``: one past the last offset this process took from the partition; past the end,
    the state it built stands on records the broker no longer has: ``LogReset``. ``committed``:
    where the group's committed (or Faust's read) offset says reading resumes; past the end
    (the offsets were committed before the loss, or by this very worker into the new log), it
    only has to be forgotten, as Kafka's ``auto.offset.reset`` would: False. On an intact log
    both are at most the end; unknowns are None.

    >>> check_log_end("p", 500, 497, 388)
    True
    >>> check_log_end("p", 15, None, 388)
    False
    >>> check_log_end("p", 15, 497, 388)
    Traceback (most recent call last):
    ...
    stream.kafka.offsets.LogReset: p: the broker's log now ends at offset 15, below offset 497 \
that this worker already processed: the broker lost its data or the topic was recreated
    """
    if end is None or end < 0:
        return True
    if taken is not None and taken > end:
        raise LogReset(tp, taken, end)
    return committed is None or committed <= end


@dataclass
class _Partition:
    expected: int
    sought_at: float = float("-inf")


@dataclass
class OffsetContinuity:
    """Decides, message by message, whether a partition's offsets are contiguous.

    >>> c = OffsetContinuity(retry_s=1.0)
    >>> [c.check("p", o, now=0.0).value for o in (5, 6, 6, 8, 9)]
    ['take', 'take', 'seen', 'rewind', 'wait']
    >>> c.expected("p")
    7
    >>> [c.check("p", o, now=0.1).value for o in (7, 8)]
    ['take', 'take']
    >>> c.revoke(["p"])
    >>> [c.check("p", o, now=0.2).value for o in (9, 10)]  # fetched before the revocation
    ['fenced', 'fenced']
    >>> [c.check("p", o, committed=8, now=0.3).value for o in (10, 8)]
    ['rewind', 'take']
    """

    retry_s: float = 1.0
    _partitions: dict[Hashable, _Partition] = field(default_factory=dict)
    #: Revoked partitions not read since (``revoke``).
    _fenced: set[Hashable] = field(default_factory=set)
    #: Gaps accepted as real: (partition, first absent offset, first offset after the gap).
    accepted: list[tuple[Hashable, int, int]] = field(default_factory=list)

    def check(
        self,
        tp: Hashable,
        offset: int,
        committed: int | None = None,
        *,
        now: float,
        start: int | None = None,
    ) -> Verdict:
        """The verdict for the message at ``offset`` arriving at ``now`` (monotonic seconds).

        ``committed`` (the group's committed offset, when known) is where the first message
        after an assignment must start. After a revocation (``revoke``) the partition restarts
        at ``committed``, or at ``start`` (where reading starts without a commit) when the
        group has none; until one of them is known its messages are ``FENCED``."""
        state = self._partitions.get(tp)
        if state is None:
            if tp in self._fenced:
                restart = committed if committed is not None else start
                if restart is None:
                    return Verdict.FENCED
                self._fenced.discard(tp)
                state = self._partitions[tp] = _Partition(expected=restart)
            elif committed is not None and offset > committed:
                state = self._partitions[tp] = _Partition(expected=committed)
                return self._gap(state, now)
            else:
                self._partitions[tp] = _Partition(expected=offset + 1)
                return Verdict.TAKE
        if offset == state.expected:
            state.expected += 1
            state.sought_at = float("-inf")
            return Verdict.TAKE
        if offset < state.expected:
            return Verdict.SEEN
        return self._gap(state, now)

    def _gap(self, state: _Partition, now: float) -> Verdict:
        if now - state.sought_at < self.retry_s:
            return Verdict.WAIT
        state.sought_at = now
        return Verdict.REWIND

    def accept(self, tp: Hashable, first: int) -> None:
        """The broker holds nothing between the expected offset and ``first`` (the first offset
        it has at or after it): the gap is real, ``first`` is expected next."""
        state = self._partitions.get(tp)
        if state is not None and first > state.expected:
            self.accepted.append((tp, state.expected, first))
            state.expected = first

    def expected(self, tp: Hashable) -> int | None:
        """The next offset ``tp`` must deliver (None before its first message)."""
        state = self._partitions.get(tp)
        return None if state is None else state.expected

    def is_fenced(self, tp: Hashable) -> bool:
        return tp in self._fenced

    @property
    def fencing(self) -> bool:
        """Whether any partition is fenced (a batch's messages need the check at all)."""
        return bool(self._fenced)

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Start ``tps`` afresh: their first message sets where they continue."""
        for tp in tps:
            self._partitions.pop(tp, None)
            self._fenced.discard(tp)

    def revoke(self, tps: Iterable[Hashable]) -> None:
        """Partitions revoked: their next owner reads their unacked messages again, from the
        committed offset. If that is this worker, messages are fenced until ``check`` is told
        where reading restarts."""
        for tp in tps:
            self._partitions.pop(tp, None)
            self._fenced.add(tp)
