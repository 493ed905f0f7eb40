"""The Faust app factory: topics, the users table, the ingest agent and the HTTP views.

Nothing here is module-level state: ``create_app(settings)`` builds a fresh app, so a worker
process, a test, or a benchmark each get their own. Agents are thin loops around
``stream.ingest``; the logic they run is pure and tested without a broker.
"""

from __future__ import annotations

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
from stream.dlq import dlq_message
from stream.errors import ConfigError, Rejected
from stream.events import INPUT_TOPICS, TOPIC_OF_KIND
from stream.ingest import BatchResult, RawMessage, apply_clean, clean_message, dead_letter
from stream.kafka_compat import first_offsets
from stream.kafka_compat import install as install_kafka_compat
from stream.metrics import Metrics
from stream.offsets import OffsetContinuity, Verdict
from stream.ordering import EventTimeAligner
from stream.partitioning import owner_partition
from stream.scoring.engine import UserInput
from stream.serving import Serving
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
from stream.topics import CLOCK, DLQ, OUTPUT_TOPICS
from stream.validation import decode_clock
from stream.web import register_views

__all__ = ["ShopscoreApp", "create_app"]

log = logging.getLogger("shopscore")

#: How long the agent may receive nothing before the partitions whose fetch position is past
#: its offsets are read again from the first missing one (``ShopscoreApp._lost_tails``).
LOST_TAIL_QUIET_S = 10.0

#: How long Faust may leave a partition unfetched because its stream buffer was full before
#: it is fetched again (``resume_stuck_partitions``): a drained buffer resumes it in far less.
STUCK_PARTITION_S = 5.0


def _broker_credentials(settings: Settings) -> faust.auth.Credentials | None:
    """Faust's form of the Kafka security settings (``Settings.kafka_client_options``)."""
    options = settings.kafka_client_options()
    protocol = options.get("security_protocol")
    if protocol is None:
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return faust.SASLCredentials(
        username=options["sasl_plain_username"],
        password=options["sasl_plain_password"],
        ssl_context=options.get("ssl_context"),
        mechanism=options["sasl_mechanism"],
    )


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
        self.app = faust.App(
            settings.app_id,
            broker=settings.broker,
            store=settings.store,
            datadir=str(settings.data_dir),
            web_bind=settings.web_host,
            web_host=settings.advertised_web_host(),
            web_port=settings.web_port,
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            topic_allow_declare=True,
            broker_rebalance_timeout=settings.rebalance_timeout_ms / 1000,
            broker_session_timeout=settings.session_timeout_ms / 1000,
            broker_heartbeat_interval=min(1.0, settings.session_timeout_ms / 3000),
            consumer_auto_offset_reset="earliest",
            processing_guarantee="at_least_once",
            # On revocation Faust would wait for the events the aligner holds, while the
            # partitions they wait for are paused; the new owner reads them again anyway.
            stream_wait_empty=False,
            # Scores and changelogs are many small messages: a few ms of linger batches them
            # into far fewer produce requests (the worker was bound by socket writes).
            producer_linger=0.005,
            producer_max_batch_size=512 * 1024,
            key_serializer="raw",
            value_serializer="raw",
            broker_credentials=_broker_credentials(settings),
        )
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
        self._partition_event: dict[int, EventT] = {}
        self._partition_users: dict[int, set[str]] = {}
        self.serving = Serving(
            settings,
            self.metrics,
            users=self.users,
            scores=self.scores,
            learners=self.learners,
            send=lambda topic, key, value: self.outputs[topic].send_soon(
                key=key.encode(), value=value
            ),
            acting_as=lambda partition: _acting_as(self._partition_event[partition]),
        )
        self.first_event_monotonic: float | None = None
        self.aligner: EventTimeAligner[Any] = EventTimeAligner(
            INPUT_TOPICS, max_hold_s=settings.align_max_hold_ms / 1000
        )
        self._ack_queues: defaultdict[TP, deque[EventT]] = defaultdict(deque)
        self._done: set[int] = set()
        self.continuity = OffsetContinuity()
        self._delivered_at: dict[TP, float] = {}
        self._log_start: dict[TP, int] = {}
        self._buffered_since: dict[TP, float] = {}
        self._stream: faust.StreamT | None = None
        self._register_agents()
        self._register_views()
        self._register_timers()
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

    def _owns(self, user_id: str, partition: int) -> bool:
        """Whether Kafka's default partitioner puts ``user_id`` on ``partition`` (murmur2,
        ``stream.partitioning``; cached per user id)."""
        return owner_partition(user_id, self.settings.partitions) == partition

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
        fetch; when it has, the time of that fetch (see ``stream.ordering``)."""
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

    async def _apply_released(
        self, result: BatchResult, now_ms: int, *, drain: bool = False
    ) -> None:
        """Apply the events the aligner releases, write states, publish, count, then ack."""
        metrics = self.metrics
        released = (
            self.aligner.drain()
            if drain
            else self.aligner.release(self._caught_up, time.monotonic())
        )
        items = [item for item in released if item[1] is not None]
        ticks = [(event, ts) for event, msg, ts in released if msg is None]
        apply_clean(
            items,
            lambda user_id: self.users.get(user_id.encode()),
            result,
            features=self.features,
            now_ms=now_ms,
        )
        for user_id, event in result.touched.items():
            with _acting_as(event):
                self.users[user_id.encode()] = result.states[user_id]
        await self._score_applied(result)
        for event, ts in ticks:
            await self._advance_clock(event, ts)
        for key, record in result.dead_letters:
            dlq_key, dlq_value = dlq_message(key, record)  # bounded: always producible
            self.dlq.send_soon(key=dlq_key, value=dlq_value)
        if result.dead_letters:
            metrics.produced.labels(DLQ).inc(len(result.dead_letters))
        for event, user_id in result.misrouted:
            msg = event.message
            # To the owner partition explicitly: the producer's partitioner does not matter.
            self.input_topics[msg.topic].send_soon(
                key=user_id.encode(),
                value=msg.value,
                partition=owner_partition(user_id, self.settings.partitions),
            )
            metrics.misrouted.labels(self._contract_name[msg.topic]).inc()
        for topic, n in result.consumed.items():
            metrics.consumed.labels(topic).inc(n)
        for (topic, reason), n in result.rejected.items():
            metrics.rejected.labels(topic, reason).inc(n)
            if reason == "late":
                metrics.late.labels(topic).inc(n)
        for topic, n in result.duplicates.items():
            metrics.duplicates.labels(topic).inc(n)
        applied: dict[str, int] = {}
        for event in result.applied:
            applied[event.kind] = applied.get(event.kind, 0) + 1
        for kind, n in applied.items():
            metrics.applied.labels(TOPIC_OF_KIND[kind]).inc(n)
        metrics.held.set(len(self.aligner))
        now_s = time.time()
        for event, _ts in ticks:
            self._done.add(id(event))
        for event, _msg, _clean in items:
            self._done.add(id(event))
            if event.message.timestamp > 0:  # Kafka record timestamp: when the event arrived
                metrics.ingest_latency.observe(max(0.0, now_s - event.message.timestamp))
        await self._flush_acks()

    async def _score_applied(self, result: BatchResult) -> None:
        """Score every user with newly applied events, once per batch (their last event is
        the trigger), before the batch's events are acked."""
        if not result.applied and not result.redelivered:
            return
        events: dict[str, list[Any]] = {}
        for event in result.applied:
            events.setdefault(event.user_id, []).append(event)
        # A user whose events were all redelivered (after a crash) is scored again too: the
        # crash may have come between writing the state and publishing the scores.
        last_seen: dict[str, Any] = {}
        for event in result.redelivered:
            if event.user_id not in events:
                last_seen[event.user_id] = max(
                    event, last_seen.get(event.user_id, event), key=lambda e: e.ts
                )
        users: list[UserInput] = []
        arrived: dict[str, float] = {}
        for user_id, applied in events.items():
            ref = result.touched[user_id]
            partition = ref.message.partition
            known = self._partition_users.get(partition)
            if known is not None:
                known.add(user_id)
            self._partition_event[partition] = ref
            applied.sort(key=lambda e: e.ts)
            state = result.states[user_id]
            users.append(
                UserInput(
                    user_id,
                    partition,
                    state,
                    self.serving.user_scores(user_id),
                    applied,
                    state.max_ts or applied[-1].ts,
                    applied[-1].event_id,
                )
            )
            arrived[user_id] = ref.message.timestamp
        for user_id, event in last_seen.items():
            ref = result.touched[user_id]
            self._partition_event[ref.message.partition] = ref
            state = result.states[user_id]
            users.append(
                UserInput(
                    user_id,
                    ref.message.partition,
                    state,
                    self.serving.user_scores(user_id),
                    [],
                    state.max_ts or event.ts,
                    event.event_id,
                )
            )
        # A user whose scoring fails costs that user's scores only (counted and logged by
        # ``Serving.score``); anything escaping is not about one user's data, and stops the
        # worker before this batch is acked (``_fatal``).
        await self.serving.score(users, churn_only=False, arrived=arrived)
        await self._deliver_due(users)

    async def _deliver_due(self, users: list[UserInput]) -> None:
        """Stream time moved on: deliver the labels that fell due on each partition (churn
        horizons and offer windows that ended without an order), also for users who stay away
        and so never trigger anything themselves."""
        stream_time: dict[int, int] = {}
        for user in users:
            stream_time[user.partition] = max(stream_time.get(user.partition, 0), user.at_ms)
        for partition, now in sorted(stream_time.items()):
            await self.serving.deliver_due(partition, now, lambda p=partition: self._users_of(p))

    def _hold_tick(self, event: EventT, result: BatchResult, now_ms: int, wall: float) -> None:
        """A clock message joins the aligner (it holds nothing back itself). One that breaks
        the clock rules (``decode_clock``: an event's timestamp bounds) is dead-lettered with
        source topic ``clock`` and counted with the batch's rejections, then acked: the clock
        never moves to a forged time."""
        message = event.message
        try:
            ts = decode_clock(message.value, now_ms=now_ms, limits=self.settings.limits)
        except Exception as exc:
            reason, detail = (
                (exc.reason, exc.detail)
                if isinstance(exc, Rejected)
                else ("processing_error", repr(exc)[:500])
            )
            log.warning(
                "clock message at partition %s offset %s dead-lettered: %s (%s)",
                message.partition,
                message.offset,
                reason,
                detail[:200],
            )
            raw = RawMessage(CLOCK, message.partition, message.offset, message.key, message.value)
            dead_letter(result, raw, reason, detail, now_ms)
            self._done.add(id(event))
            return
        self.aligner.push(
            CLOCK,
            event.message.partition,
            ts=ts,
            item=(event, None, ts),
            now=wall,
            fetched_ms=self._fetched_ms(event.message.tp),
        )

    async def _advance_clock(self, event: EventT, ts: int) -> None:
        partition = event.message.partition
        key = str(partition).encode()
        if ts <= self.clock.get(key, 0):
            return
        with _acting_as(event):
            self.clock[key] = ts
        self._partition_event[partition] = event
        n = await self.rescore_idle(partition, ts)
        log.info("clock %d on partition %d: %d idle users re-scored", ts, partition, n)

    def _users_of(self, partition: int) -> set[str]:
        """The users whose state lives on ``partition`` (built from the table once, after a
        start or an assignment; then kept up to date as users are touched)."""
        users = self._partition_users.get(partition)
        if users is None:
            users = {key.decode() for key in self.users if self._owns(key.decode(), partition)}
            self._partition_users[partition] = users
        return users

    async def rescore_idle(self, partition: int, at_ms: int, chunk: int = 1000) -> int:
        """Clock: re-score, for churn at ``at_ms``, every user of ``partition`` whose newest
        event is older (their risk rises while they stay away)."""
        idle: list[UserInput] = []
        scored = 0
        for user_id in sorted(self._users_of(partition)):
            state = self.users.get(user_id.encode())
            if state is None or (state.max_ts or 0) >= at_ms:
                continue
            scores = self.serving.user_scores(user_id)
            idle.append(UserInput(user_id, partition, state, scores, [], at_ms, "clock"))
            if len(idle) >= chunk:
                await self.serving.score(idle, churn_only=True)
                scored += len(idle)
                idle = []
        await self.serving.score(idle, churn_only=True)
        return scored + len(idle)

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

    async def _flush_acks(self) -> None:
        """Ack each partition's messages in offset order, up to the first one still held.

        Faust commits the highest contiguous acked offset, but it does not see a gap at the
        head of a partition's acked offsets (none is checked before the first commit, and a
        single missing offset is missed later), so acking a held message's successors first
        could commit past it. Acking in order keeps every held message uncommitted.
        """
        if self._stream is None:
            return
        for queue in self._ack_queues.values():
            while queue and id(queue[0]) in self._done:
                event = queue.popleft()
                self._done.discard(id(event))
                await self._stream.ack(event)

    async def _process_batch(self, events: list[EventT]) -> None:
        """One micro-batch: check offsets, clean, align, apply, score, publish, then ack."""
        settings = self.settings
        metrics = self.metrics
        contract = self._contract_name
        started = time.perf_counter()
        if self.first_event_monotonic is None:
            self.first_event_monotonic = time.monotonic()
            log.info(
                "first event processed %.2fs after start",
                self.first_event_monotonic - self.started_monotonic,
            )
        now_ms = int(time.time() * 1000)
        wall = time.monotonic()
        result = BatchResult()
        rewind: dict[TP, int] = {}
        for event in events:
            message = event.message
            # Every message is acked by us, in offset order (``_flush_acks``); this
            # reference outlives take_events' own ack of the batch. A message that is
            # not taken (``stream.offsets``) keeps it for good: it is never acked, its
            # in-order twin is.
            message.incref()
            if not self._take(message, rewind, wall):
                continue
            self._ack_queues[message.tp].append(event)
            if message.topic == self._clock_name:
                self._hold_tick(event, result, now_ms, wall)
                continue
            msg = RawMessage(
                contract[message.topic],
                message.partition,
                message.offset,
                message.key,
                message.value,
            )
            clean = clean_message(
                msg, event, result, now_ms=now_ms, limits=settings.limits, owns=self._owns
            )
            if clean is None:
                self._done.add(id(event))  # dead-lettered or re-keyed: nothing to hold
            else:
                self.aligner.push(
                    msg.topic,
                    msg.partition,
                    ts=clean.ts,
                    item=(event, msg, clean),
                    now=wall,
                    fetched_ms=self._fetched_ms(message.tp),
                )
        if rewind:
            await self._rewind(rewind)
        await self._apply_released(result, now_ms)
        metrics.batch_size.observe(len(events))
        metrics.batch_seconds.observe(time.perf_counter() - started)

    def _fatal(self, exc: BaseException) -> None:
        """An error escaped a batch (not a bad message or a user's scoring: those are handled
        where they happen). Faust would restart the agent with this batch's messages never
        acked, freezing every later commit of their partitions, so the worker stops instead
        (``on_fatal``, set by ``shopscore worker``): nothing after the batch is committed, and
        its supervisor's restart reads it again."""
        log.critical(
            "the ingest agent failed; stopping the worker so nothing after this batch is "
            "committed",
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

    # -- timers -----------------------------------------------------------------------------

    def _register_timers(self) -> None:
        metrics = self.metrics

        async def release_held() -> None:
            # Events held for alignment are released even when no new batch arrives.
            if len(self.aligner) and self._stream is not None:
                try:
                    await self._apply_released(BatchResult(), int(time.time() * 1000))
                except Exception as exc:
                    self._fatal(exc)
                    raise

        self.app.timer(0.2, name="shopscore.release_held")(release_held)

        @self.app.on_partitions_assigned.connect
        async def note_log_starts(app: Any, assigned: set[TP], **kwargs: Any) -> None:
            # Where a partition with no committed offset starts (``_caught_up``).
            inputs = [tp for tp in assigned if tp.topic in self._contract_name]
            if not inputs:
                return
            try:
                self._log_start.update(await self.app.consumer.earliest_offsets(*inputs))
            except Exception as exc:  # unknown starts only make the aligner wait a while
                log.warning("could not read the input partitions' first offsets: %s", exc)

        @self.app.on_partitions_revoked.connect
        async def forget_revoked(app: Any, revoked: set[TP], **kwargs: Any) -> None:
            # Held events of revoked partitions are not applied here: they are uncommitted,
            # so their new owner reads them again.
            dropped = self.aligner.forget_partitions({tp.partition for tp in revoked})
            self.serving.forget({tp.partition for tp in revoked})
            self.continuity.forget(revoked)
            for tp in revoked:
                self._delivered_at.pop(tp, None)
            for tp in revoked:
                self._partition_users.pop(tp.partition, None)
            for tp in revoked:
                for event in self._ack_queues.pop(tp, ()):
                    self._done.discard(id(event))
            if dropped:
                log.info("revoked partitions: %d held events left to their new owner", len(dropped))

        async def refresh_gauges() -> None:
            metrics.users.set(len(self.users))
            metrics.ready.set(1 if self.ready()[0] else 0)
            monitor = self.app.monitor
            ends = getattr(monitor, "tp_end_offsets", None) or {}
            reads = getattr(monitor, "tp_read_offsets", None) or {}
            committed = getattr(monitor, "tp_committed_offsets", None) or {}
            lag: dict[tuple[str, str], int] = {}
            for tp in self.app.consumer.assignment():
                name = self._contract_name.get(tp.topic)
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

        self.app.timer(1.0, name="shopscore.refresh_gauges")(refresh_gauges)

        async def reread_lost_tails() -> None:
            rewind = self._lost_tails(time.monotonic(), LOST_TAIL_QUIET_S)
            if rewind:
                await self._rewind(rewind)

        self.app.timer(1.0, name="shopscore.reread_lost_tails")(reread_lost_tails)

        async def resume_stuck_partitions() -> None:
            # Faust stops fetching a partition whose messages fill the stream buffer and
            # fetches it again when its queue signals the pressure dropped; that signal can be
            # lost (faust-streaming issues 175 and 640), and the partition is then never
            # fetched again: seen as two partitions silent for 5 minutes in a long replay, with
            # every other partition held back behind them for event-time alignment.
            consumer = self.app.consumer
            buffered = set(getattr(consumer, "_buffered_partitions", ()))
            now = time.monotonic()
            for tp in list(self._buffered_since):
                if tp not in buffered:
                    del self._buffered_since[tp]
            for tp in buffered:
                since = self._buffered_since.setdefault(tp, now)
                if now - since >= STUCK_PARTITION_S:
                    log.info(
                        "%s: fetching again after %.0f s paused for a full buffer", tp, now - since
                    )
                    consumer.on_buffer_drop(tp)
                    del self._buffered_since[tp]

        self.app.timer(1.0, name="shopscore.resume_stuck_partitions")(resume_stuck_partitions)

        async def watch_models() -> None:
            await self.serving.maybe_swap_models()

        if self.settings.model_dir is not None:
            self.app.timer(self.settings.model_poll_ms / 1000, name="shopscore.models")(
                watch_models
            )

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
