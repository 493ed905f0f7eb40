"""The Faust app factory: topics, the users table, the ingest agent and the HTTP views.

Nothing here is module-level state: ``create_app(settings)`` builds a fresh app, so a worker
process, a test, or a benchmark each get their own. Agents are thin loops around
``stream.pipeline.ingest``; the logic they run is pure and tested without a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from typing import Any

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.streams import _current_event
from faust.types import TP, EventT

from stream.broker_watch import install as install_broker_watch
from stream.contract.topics import CLOCK, DLQ, OUTPUT_TOPICS
from stream.errors import ConfigError
from stream.events import INPUT_TOPICS
from stream.kafka.options import faust_app_options
from stream.kafka_compat import first_offsets
from stream.kafka_compat import install as install_kafka_compat
from stream.metrics import Metrics
from stream.model_swap import ModelWatcher, publish_model_info
from stream.models.registry import load_models
from stream.offsets import OffsetContinuity, Verdict
from stream.pipeline import BatchOutput, InputRecord, Pipeline, PipelineConfig, Stores
from stream.scoring.state import UserScores
from stream.settings import Settings
from stream.tables import (
    CLOCK_CODEC,
    SCORES_CODEC,
    STATE_CODEC,
    check_clock,
    check_learners,
    check_scores,
    check_users,
    guard_changelog,
)
from stream.timers import register_timers
from stream.web import register_views

__all__ = ["ShopscoreApp", "create_app"]

log = logging.getLogger("shopscore")


@contextlib.contextmanager
def _acting_as(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event while writing a table key.

    Faust picks the changelog partition (and the RocksDB partition store) from the current
    event. In a micro-batch the current event is the batch's last, which may be of another
    partition, so each user's write is attributed to that user's own last message.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class ShopscoreApp:
    """A configured Faust app plus the handles tests and the CLI need (tables, metrics)."""

    def __init__(self, settings: Settings) -> None:
        if not settings.broker:
            raise ConfigError(
                "the worker needs a broker: set SHOPSCORE_BROKER or pass --broker "
                "(`shopscore run` starts an embedded one)"
            )
        if settings.store == "rocksdb://":
            try:
                import rocksdict  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "SHOPSCORE_STORE=rocksdb:// needs the rocksdict package: "
                    "pip install 'shopscore[rocksdb]'"
                ) from None
        self.settings = settings
        install_kafka_compat()
        self.features = settings.feature_config()
        self.metrics = Metrics()
        self.started_monotonic = time.monotonic()
        self.app = faust.App(settings.app_id, **faust_app_options(settings))
        setup_prometheus_sensors(
            self.app,
            pattern="/metrics",
            registry=self.metrics.registry,
            name_prefix="shopscore_faust",
        )
        # The clock travels with the input topics through one agent and the event-time
        # aligner, so a tick at T is handled only after the partition's events up to T.
        self.inputs = self.app.topic(
            *(settings.topic(t) for t in INPUT_TOPICS), settings.topic(CLOCK)
        )
        self._clock_name = settings.topic(CLOCK)
        self.input_topics = {
            settings.topic(t): self.app.topic(settings.topic(t)) for t in INPUT_TOPICS
        }
        self.dlq = self.app.topic(settings.topic(DLQ))
        self.users = self._codec_table(
            "users",
            STATE_CODEC,
            "Per-user state (features), keyed by the user_id's UTF-8 bytes.",
            check_users(settings.limits),
        )
        self._contract_name = {settings.topic(t): t for t in INPUT_TOPICS}
        self.clock = self._codec_table(
            "clock",
            CLOCK_CODEC,
            "Latest event time announced on each clock partition (design notes, Clock).",
            check_clock(settings.limits, lambda: int(time.time() * 1000)),
        )
        # Scoring state beside the features (``stream.scoring.state``): per user, and the
        # online learners per partition (key: the partition number).
        self.scores = self._codec_table(
            "scores",
            SCORES_CODEC,
            "Per-user latest scores and predictions awaiting labels.",
            check_scores(settings.limits),
        )
        self.learners = self.app.Table(
            "learners",
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
            help="The online learners of each partition (River), checkpointed.",
        )
        guard_changelog(self.learners, "learners", check_learners, self.metrics)
        self.outputs = {t: self.app.topic(settings.topic(t)) for t in OUTPUT_TOPICS}
        #: Every topic the pipeline's records go to, by contract name (inputs: re-keyed events).
        self._topics = {
            **self.outputs,
            DLQ: self.dlq,
            **{t: self.input_topics[settings.topic(t)] for t in INPUT_TOPICS},
        }
        self._tables = {
            "users": self.users,
            "scores": self.scores,
            "learners": self.learners,
            "clock": self.clock,
        }
        #: The latest consumed event of each partition: table writes are attributed to it.
        self._partition_event: dict[int, EventT] = {}
        self.models = ModelWatcher(settings.model_dir)
        self.pipeline = Pipeline(
            PipelineConfig.from_settings(settings),
            load_models(settings.model_dir),
            Stores(self.users, self.scores, self.learners, self.clock),
            infer=self._infer,
        )
        publish_model_info(self.pipeline.scorer, self.metrics)
        #: One batch at a time: the ingest agent, the release timer and a model swap take it.
        self.lock = asyncio.Lock()
        self.first_event_monotonic: float | None = None
        self._ack_queues: defaultdict[TP, deque[EventT]] = defaultdict(deque)
        self.continuity = OffsetContinuity()
        self._delivered_at: dict[TP, float] = {}
        self._log_start: dict[TP, int] = {}
        self._buffered_since: dict[TP, float] = {}
        self._stream: faust.StreamT | None = None
        self._register_agents()
        self._register_views()
        register_timers(self)
        self.broker_watch = install_broker_watch(self)
        #: Called with an exit status when the ingest agent fails (``_fatal``).
        self.on_fatal: Callable[[int], None] | None = None

    def _codec_table(
        self, name: str, codec: str, help: str, check: Callable[[Any], str | None]
    ) -> Any:
        """A table of plain objects of the Faust-free core, written with ``codec``, whose
        recovery skips the records ``check`` refuses (``stream.tables``).

        Faust derives a table's codecs from Record key/value types, else JSON, so the changelog
        topic is declared here with the codec, and the table is told to write with it too.
        """
        settings = self.settings
        changelog = self.app.topic(
            f"{settings.app_id}-{name}-changelog",
            key_type=bytes,
            key_serializer="raw",
            value_serializer=codec,
            partitions=settings.partitions,
            compacting=True,
            deleting=False,
            acks=False,
            internal=True,
        )
        table = self.app.Table(
            name,
            partitions=settings.partitions,
            key_type=bytes,
            changelog_topic=changelog,
            help=help,
        )
        table.value_serializer = codec
        guard_changelog(table, name, check, self.metrics)
        return table

    # -- agents -----------------------------------------------------------------------------

    def _fetch_state(self, tp: TP) -> Any:
        """aiokafka's fetch state of ``tp`` (position, high watermark, last fetch time)."""
        try:
            consumer = self.app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]
            return consumer._subscription.subscription.assignment.state_value(tp)
        except Exception:  # not assigned / consumer restarting
            return None

    def _fetched_ms(self, tp: TP) -> float:
        """When the latest fetch of ``tp`` returned: no later than this, its records arrived."""
        state = self._fetch_state(tp)
        stamp = getattr(state, "timestamp", None)
        return float(stamp) if stamp is not None else float("-inf")

    def _caught_up(self, topic: str, partition: int) -> bool | float | None:
        """Whether this worker has read everything in ``topic``'s ``partition`` as of its last
        fetch; when it has, the time of that fetch (see ``stream.pipeline.ordering``)."""
        tp = TP(self.settings.topic(topic), partition)
        state = self._fetch_state(tp)
        if state is None:
            return None
        highwater = state.highwater
        if highwater is None or highwater < 0:
            return None
        expected = self.continuity.expected(tp)  # the next offset the agent is to receive
        if expected is not None:
            caught_up = expected >= highwater
        elif (committed := self.app.consumer._committed_offset.get(tp)) is not None:  # type: ignore[attr-defined]
            # Nothing delivered since the assignment: the agent starts at the committed offset.
            # (Not the fetch position: fetched records may wait in Faust's queues for seconds
            # behind a backlog of other topics, and calling their topic caught up then released
            # those topics' events ahead of them, which then arrived late.)
            caught_up = committed >= highwater
        elif (start := self._log_start.get(tp)) is not None:
            caught_up = start >= highwater  # no commit yet: reading starts at the log's start
        else:
            return None  # where reading starts is not known: the aligner waits a while
        if not caught_up:
            return False
        return float(state.timestamp) if state.timestamp is not None else True

    @staticmethod
    async def _infer(fn: Callable[[Any], Any], arg: Any) -> Any:
        """Inference off the event loop (onnxruntime releases the GIL): heartbeats, fetches and
        the web server go on while a batch is scored."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, arg)

    def user_scores(self, user_id: str) -> UserScores:
        stored = self.scores.get(user_id.encode())
        return stored if stored is not None else UserScores()

    async def _run(self, records: list[InputRecord]) -> None:
        """Hand ``records`` to the pipeline, then apply what it returns: table writes first,
        then the records, then the acks of what it says is handled. Faust commits an acked
        offset only after the producer has flushed (``stream.kafka_compat``), so states and
        outputs are durable before their input is committed."""
        async with self.lock:
            out = await self.pipeline.process(records, self._caught_up)
            self._write(out)
            self._send(out)
            self.metrics.record(out.counts)
            await self._ack(out.commit)

    def _write(self, out: BatchOutput) -> None:
        by_partition: dict[int, list[Any]] = {}
        for write in out.writes:
            by_partition.setdefault(write.partition, []).append(write)
        for partition, writes in by_partition.items():
            with _acting_as(self._partition_event[partition]):
                for write in writes:
                    table = self._tables[write.table]
                    if write.value is None:
                        table.pop(write.key, None)
                    else:
                        table[write.key] = write.value

    def _send(self, out: BatchOutput) -> None:
        topics = self._topics
        for record in out.records:
            topics[record.topic].send_soon(
                key=record.key, value=record.value, partition=record.partition
            )

    async def _ack(self, commit: dict[tuple[str, int], int]) -> None:
        """Ack each partition's messages below the offset the pipeline says is safe.

        Faust commits the highest contiguous acked offset, but it does not see a gap at the
        head of a partition's acked offsets (none is checked before the first commit, and a
        single missing offset is missed later), so acking a held message's successors first
        could commit past it. Acking in order, up to the safe offset, keeps every held
        message uncommitted.
        """
        if self._stream is None:
            return
        ack = self._stream.ack
        for (topic, partition), offset in commit.items():
            queue = self._ack_queues.get(TP(self.settings.topic(topic), partition))
            while queue and queue[0].message.offset < offset:
                await ack(queue.popleft())

    def _take(self, message: Any, rewind: dict[TP, int], now: float) -> bool:
        """Whether ``message`` continues its partition's offsets (``stream.offsets``); a gap
        puts the partition's first missing offset into ``rewind``."""
        tp = message.tp
        committed = self.app.consumer._committed_offset.get(tp)  # type: ignore[attr-defined]
        verdict = self.continuity.check(tp, message.offset, committed, now=now)
        if verdict is Verdict.REWIND:
            expected = self.continuity.expected(tp)
            if expected is not None:
                rewind[tp] = expected
        if verdict is Verdict.TAKE:
            self._delivered_at[tp] = now
        return verdict is Verdict.TAKE

    def _lost_tails(self, now: float, quiet_s: float) -> dict[TP, int]:
        """Once the agent has received nothing at all for ``quiet_s``, the partitions whose
        fetch position is past what it got: a message lost at a partition's end leaves no
        later offset to reveal the gap (and would hold back event-time alignment for good).
        While anything still arrives, fetched messages may just be queued inside Faust behind
        a backlog (seen: partitions silent for 10 s in a 2-million-event replay)."""
        rewind: dict[TP, int] = {}
        if not self._delivered_at or now - max(self._delivered_at.values()) < quiet_s:
            return rewind
        for tp in self._delivered_at:
            expected = self.continuity.expected(tp)
            if expected is None:
                continue
            state = self._fetch_state(tp)
            if state is None or not state.has_valid_position:
                continue
            if state.position > expected:
                rewind[tp] = expected
        return rewind

    async def _rewind(self, rewind: dict[TP, int]) -> None:
        """Seek partitions back to offsets that were skipped before reaching the agent, after
        asking the broker which of them exist (a real gap is accepted, not re-read forever)."""
        consumer = self.app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]
        try:
            first = await first_offsets(consumer, rewind)
        except Exception as exc:  # broker unreachable: seek anyway, the probe is retried later
            log.warning("offset probe failed (%s); reading again from the expected offsets", exc)
            first = {}
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
                self.metrics.rewinds.labels(self._contract_name.get(tp.topic, CLOCK)).inc()
            self._delivered_at[tp] = now
        await self.app.consumer.seek_wait(rewind)

    async def _process_batch(self, events: list[EventT]) -> None:
        """One micro-batch: check offsets, then run the pipeline over what continues them."""
        started = time.perf_counter()
        if self.first_event_monotonic is None:
            self.first_event_monotonic = time.monotonic()
            log.info(
                "first event processed %.2fs after start",
                self.first_event_monotonic - self.started_monotonic,
            )
        wall = time.monotonic()
        contract = self._contract_name
        records: list[InputRecord] = []
        rewind: dict[TP, int] = {}
        for event in events:
            message = event.message
            # Every message is acked by us, in offset order (``_ack``); this reference
            # outlives take_events' own ack of the batch. A message that is not taken
            # (``stream.offsets``) keeps it for good: it is never acked, its in-order twin is.
            message.incref()
            if not self._take(message, rewind, wall):
                continue
            self._ack_queues[message.tp].append(event)
            self._partition_event[message.partition] = event
            records.append(
                InputRecord(
                    contract.get(message.topic, CLOCK),
                    message.partition,
                    message.offset,
                    message.key,
                    message.value,
                    message.timestamp,
                    self._fetched_ms(message.tp),
                )
            )
        if rewind:
            await self._rewind(rewind)
        await self._run(records)
        self.metrics.batch_size.observe(len(events))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    def _fatal(self, exc: BaseException) -> None:
        """An error escaped a batch (not a bad message or a user's scoring: those are handled
        where they happen). Faust would restart the agent with this batch's messages never
        acked, freezing every later commit of their partitions, so the worker stops instead
        (``on_fatal``, set by ``shopscore worker``): nothing after the batch is committed, and
        its supervisor's restart reads it again."""
        log.critical(
            "the ingest agent failed; stopping the worker so nothing after this batch is committed",
            exc_info=exc,
        )
        if self.on_fatal is not None:
            self.on_fatal(1)

    def _register_agents(self) -> None:
        settings = self.settings

        async def ingest(stream: faust.StreamT) -> None:
            self._stream = stream
            async for events in stream.take_events(settings.batch_size, settings.batch_within_s):
                try:
                    await self._process_batch(events)
                except Exception as exc:
                    self._fatal(exc)
                    raise

        self.app.agent(self.inputs, name="shopscore.ingest")(ingest)

    def clock_ms(self) -> int | None:
        """The event time announced by the clock topic on this worker's partitions, if any."""
        return max(self.clock.values(), default=None)

    # -- web --------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready = the consumer has an assignment and every table has finished recovery."""
        app = self.app
        recovery = app.tables.recovery if app.tables else None
        recovered = bool(recovery and recovery.completed.is_set())
        try:
            assigned = len(app.consumer.assignment())
        except Exception:  # consumer not started yet
            assigned = 0
        detail = {
            "assigned_partitions": assigned,
            "rebalancing": bool(app.rebalancing),
            "tables_recovered": recovered,
            "first_event_s": (
                round(self.first_event_monotonic - self.started_monotonic, 3)
                if self.first_event_monotonic
                else None
            ),
        }
        broker = self.broker_watch.status()
        detail.update(broker)
        ok = assigned > 0 and recovered and not app.rebalancing and broker["broker_up"]
        return ok, detail

    def _register_views(self) -> None:
        register_views(self)


def create_app(settings: Settings) -> ShopscoreApp:
    """Build a worker's Faust app from ``settings``."""
    return ShopscoreApp(settings)
