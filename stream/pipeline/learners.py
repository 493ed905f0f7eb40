"""The online learners of each partition: loaded once from their checkpoint, checkpointed now
and then as table writes.

A partition's learners are one object that every user of the partition teaches, so they move
with the partition: on an assignment they are read from the ``learners`` table (restored from
its changelog), chunked (``stream.scoring.chunked``, a checkpoint outgrows one record) and signed with
``state_secret`` when one is set; on a revocation they are dropped here and live on in the
changelog for the new owner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from stream.errors import CorruptState
from stream.pipeline.stores import BatchView, Store
from stream.scoring import chunked
from stream.scoring.state import Learners

__all__ = ["CHECKPOINT_EVERY_S", "PartitionLearners"]

log = logging.getLogger("shopscore")

#: Learners are written to their changelog at most this often per partition.
CHECKPOINT_EVERY_S = 5.0


class PartitionLearners:
    """``of(partition)`` gives the partition's learners; ``checkpoint`` writes them."""

    def __init__(
        self,
        store: Store,
        secret: str | None,
        *,
        every_s: float | None = CHECKPOINT_EVERY_S,
        monotonic: Callable[[], float] = time.monotonic,
        make: Callable[[int], Learners] = Learners,
    ) -> None:
        self.store = store
        self.secret = secret
        self.every_s = every_s
        self._monotonic = monotonic
        self._make = make
        self._learners: dict[int, Learners] = {}
        self._checkpointed: dict[int, float] = {}
        #: Checkpoints refused since the last ``take_rejected``.
        self._rejected = 0

    def __contains__(self, partition: int) -> bool:
        return partition in self._learners

    def loaded(self) -> dict[int, Learners]:
        return self._learners

    def of(self, partition: int) -> Learners:
        """The partition's learners: loaded once (strictly, never running code, checked
        against ``secret``), else fresh. A checkpoint that cannot be read (forged, corrupt,
        unsigned while a secret is set, a chunk missing) is counted (``take_rejected``),
        logged with its key, and the partition's learners start afresh: never a crash, never
        code run."""
        learners = self._learners.get(partition)
        if learners is None:
            key = str(partition).encode()
            try:
                stored = chunked.join(self.store.get, key)
                if stored is not None:
                    learners = Learners.from_bytes(stored, self.secret)
            except CorruptState as exc:
                self._rejected += 1
                log.warning(
                    "refusing the learners checkpoint of partition %d (key %r): %s; the "
                    "partition's online learners start afresh",
                    partition,
                    key,
                    str(exc)[:300],
                )
            if learners is None:
                learners = self._make(partition)
            self._learners[partition] = learners
        return learners

    def take_rejected(self) -> int:
        rejected, self._rejected = self._rejected, 0
        return rejected

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._learners.pop(partition, None)
            self._checkpointed.pop(partition, None)

    def checkpoint(
        self, partitions: Iterable[int], view: BatchView, *, force: bool = False
    ) -> None:
        """Write the learners of ``partitions`` into ``view``, at most once per ``every_s``
        per partition (None: only the first time) unless ``force``: a new generation of chunks under the partition's key,
        then the previous generation's chunks deleted.

        A periodic checkpoint (not the first, not forced) is written for one partition per call
        at most, the one waiting longest: each costs ~10 ms and ~0.5 MB here, and partitions
        first scored together would otherwise fall due together, every ``every_s``, on one
        batch's latency."""
        now = self._monotonic()
        periodic_done = False
        due_first = sorted(partitions, key=lambda p: self._checkpointed.get(p, float("-inf")))
        for partition in due_first:
            learners = self._learners.get(partition)
            if learners is None:
                continue
            last = self._checkpointed.get(partition)
            if (
                not force
                and last is not None
                and (self.every_s is None or now - last < self.every_s or periodic_done)
            ):
                continue
            if not force and last is not None:
                periodic_done = True
            key = str(partition).encode()
            try:
                previous = chunked.header(view.get("learners", key))
            except CorruptState:  # a forged header: written over, its chunks are unknown
                previous = None
            generation = 1
            if previous is not None and previous[0] < chunked.MAX_GENERATION:
                generation = previous[0] + 1
            blob = learners.to_bytes(self.secret)
            for chunk_key, value in chunked.split(key, blob, generation):
                view.put("learners", partition, chunk_key, value)
            if previous:
                for index in range(previous[1]):
                    view.put(
                        "learners", partition, chunked.chunk_key(key, previous[0], index), None
                    )
            self._checkpointed[partition] = now
