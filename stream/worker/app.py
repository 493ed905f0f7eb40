"""The Faust app factory: topics, tables and the ingest agent.

The agent is thin: it takes a micro-batch, lets ``stream.kafka.consumer.InputFeed`` turn it
into records (offset continuity checked), hands them to the pure ``stream.pipeline``, writes
the tables, sends the records and acks what the pipeline has finished with. Timers and
rebalance hooks are in ``stream.worker.timers``, the HTTP views in ``stream.worker.web``.

Nothing here is module-level state: ``create_app(settings)`` builds a fresh app, so a worker
process, a test, or a benchmark each get their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import faust
from faust.types import EventT

from stream.contract.events import INPUT_TOPICS
from stream.contract.topics import CLOCK
from stream.errors import ConfigError
from stream.kafka.batches import BatchSender
from stream.kafka.changelog import ChangelogWriter
from stream.kafka.compat import input_transactions
from stream.kafka.compat import install as install_kafka_compat
from stream.kafka.consumer import InputFeed
from stream.kafka.intake import EventBatches
from stream.kafka.offsets import LogReset
from stream.kafka.options import faust_app_options
from stream.kafka.raw_schema import RawSchema
from stream.models.registry import load_models
from stream.pipeline import InputRecord, Pipeline, PipelineConfig, Stores
from stream.scoring.state import UserScores
from stream.settings import Settings
from stream.worker.broker_watch import install as install_broker_watch
from stream.worker.faust_sensor import install_faust_sensor
from stream.worker.metrics import Metrics
from stream.worker.model_swap import ModelWatcher, publish_model_info
from stream.worker.quiet_logs import TimerOverlaps
from stream.worker.state_cache import DecodedTable
from stream.worker.tables import (
    CLOCK_CODEC,
    SCORES_CODEC,
    STATE_CODEC,
    check_clock,
    check_learners,
    check_scores,
    check_users,
    decode_scores,
    decode_user,
    guard_changelog,
    touch_rejections,
)
from stream.worker.timers import register_timers
from stream.worker.web import register_views

__all__ = ["ShopscoreApp", "create_app"]

log = logging.getLogger("shopscore")

#: Exit status of a worker whose input log restarted below offsets it had processed (the
#: broker lost its data): ``stream.kafka.offsets.LogReset``.
LOG_RESET_EXIT_CODE = 4


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
        self.monitor = install_faust_sensor(self.app, self.metrics, "shopscore_faust")
        TimerOverlaps(self.metrics.registry).install()
        # The clock travels with the input topics through one agent and the event-time
        # aligner, so a tick at T is handled only after the partition's events up to T.
        self.inputs = self.app.topic(
            *(settings.topic(t) for t in INPUT_TOPICS), settings.topic(CLOCK), schema=RawSchema()
        )
        self._rejections: dict[str, Any] = {}
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
            "Latest event time announced on each clock partition (docs/contracts.md, Clock).",
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
        self._tables = {
            "users": self.users,
            "scores": self.scores,
            "learners": self.learners,
            "clock": self.clock,
        }
        #: The users and scores tables hold changelog bytes; these decode users on touch.
        self.user_states = self._decoded("users", decode_user)
        self.score_states = self._decoded("scores", decode_scores)
        #: Writes each batch's table writes, their changelogs as record batches.
        self.changelog = ChangelogWriter(
            self._tables, {"users": self.user_states, "scores": self.score_states}
        )
        trained_for = settings.trained_for()
        self.models = ModelWatcher(settings.model_dir, trained_for)
        self.pipeline = Pipeline(
            PipelineConfig.from_settings(settings),
            load_models(settings.model_dir, trained_for=trained_for),
            Stores(self.user_states, self.score_states, self.learners, self.clock),
            infer=self._infer,
        )
        publish_model_info(self.pipeline.scorer, self.metrics)
        #: One batch at a time: the ingest agent, the release timer and a model swap take it.
        self.lock = asyncio.Lock()
        self.first_event_monotonic: float | None = None
        #: The ingest agent's batches (made when the agent starts).
        self.intake: EventBatches | None = None
        #: Produces each batch's records as one record batch per partition (made once the
        #: producer exists).
        self._sender: BatchSender | None = None
        self.feed = InputFeed(
            self.app,
            settings.topic,
            on_rewind=lambda topic: self.metrics.child(self.metrics.rewinds, topic).inc(),
        )
        self._register_agents()
        self._register_views()
        register_timers(self)
        self.broker_watch = install_broker_watch(self)
        #: Called with an exit status when the ingest agent fails (``_fatal``).
        self.on_fatal: Callable[[int], None] | None = None
        #: Set by ``_fatal``: the worker is stopping, nothing more is to be checked.
        self.failed = False

    def _codec_table(
        self, name: str, codec: str, help: str, check: Callable[[Any], str | None]
    ) -> Any:
        """A table of plain objects of the Faust-free core, written with ``codec``, whose
        recovery skips the records ``check`` refuses (``stream.worker.tables``).

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
        self._rejections[name] = guard_changelog(table, name, check, self.metrics)
        return table

    def _decoded(self, name: str, decode: Callable[[bytes, bytes], Any]) -> DecodedTable:
        rejected = touch_rejections(self._rejections[name], name, self.metrics)
        table = self._tables[name]
        decoded = DecodedTable(table, decode, rejected, self.settings.state_cache_users)
        decoded.follow_changelog()
        return decoded

    # -- agents -----------------------------------------------------------------------------

    @staticmethod
    async def _infer(fn: Callable[[Any], Any], arg: Any) -> Any:
        """Inference off the event loop (onnxruntime releases the GIL): heartbeats, fetches and
        the web server go on while a batch is scored."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, arg)

    def user_scores(self, user_id: str) -> UserScores:
        stored = self.score_states.get(user_id.encode())
        return stored if stored is not None else UserScores()

    async def release_held(self) -> None:
        """Run an empty batch: the pipeline releases what alignment no longer holds back."""
        async with self.lock:
            await self._run([])

    async def _run(self, records: list[InputRecord]) -> None:
        """Hand ``records`` to the pipeline, then apply what it returns: table writes first,
        then the records, then the acks of what it says is handled. Faust commits an acked
        offset only after the producer has flushed (``stream.kafka.compat``), so states and
        outputs are durable before their input is committed. The caller holds ``lock``."""
        out = await self.pipeline.process(records, self.feed.caught_up)
        changelog = self.changelog.write(out.writes, self.feed.acting_for)
        if self._sender is None:
            self._sender = self._batch_sender()
        await self.changelog.send(self._sender, changelog)
        if out.records:
            await self._sender.send(out.records)
        self.metrics.record(out.counts)
        self.monitor.count_table_writes(self._tables, self.changelog.take_counts())
        await self.feed.ack(out.commit)

    def _batch_sender(self) -> BatchSender:
        """Record batches through the app's producer; with exactly-once, through each input
        partition's transaction, whose commits wait for whole batches (``commit_lock``)."""
        if self.settings.processing_guarantee != "exactly_once":
            return BatchSender(self.app.producer, self.settings.topic)
        self.app.consumer.commit_lock = self.lock
        inputs = [self.settings.topic(t) for t in (*INPUT_TOPICS, CLOCK)]
        return BatchSender(
            self.app.producer, self.settings.topic, input_transactions(self.app, inputs)
        )

    async def _process_batch(self, events: list[EventT]) -> None:
        """One micro-batch: check offsets, then run the pipeline over what continues them.

        Taking the records and running them is one step under ``lock``: the feed counts taken
        records as delivered (``InputFeed.caught_up``), so a release in between (the
        ``release_held`` timer) would see their partition caught up before the pipeline holds
        them, and release other topics' later events ahead of them (seen as ``late`` clicks
        once batches grew)."""
        started = time.perf_counter()
        if self.first_event_monotonic is None:
            self.first_event_monotonic = time.monotonic()
            log.info(
                "first event processed %.2fs after start",
                self.first_event_monotonic - self.started_monotonic,
            )
        async with self.lock:
            records, rewind = self.feed.take(events, time.monotonic())
            records = await self.feed.rewind_then(records, rewind)
            await self._run(records)
        self.metrics.batch_size.observe(len(events))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    def _fatal(self, exc: BaseException) -> None:
        """An error escaped a batch (not a bad message or a user's scoring: those are handled
        where they happen). Faust would restart the agent with this batch's messages never
        acked, freezing every later commit of their partitions, so the worker stops instead
        (``on_fatal``, set by ``shopscore worker``): nothing after the batch is committed, and
        its supervisor's restart reads it again."""
        self.failed = True
        if isinstance(exc, LogReset):
            # Not a crash: this worker's state and offsets belong to data the broker no longer
            # has. Going on would skip every new record as a re-read; a restart starts from
            # what the broker holds now (its changelogs rebuild the state they still have).
            log.error(
                "%s; exiting with status %d so its supervisor restarts the worker from what "
                "the broker holds now",
                exc,
                LOG_RESET_EXIT_CODE,
            )
            if self.on_fatal is not None:
                self.on_fatal(LOG_RESET_EXIT_CODE)
            return
        log.critical(
            "the ingest agent failed; stopping the worker so nothing after this batch is committed",
            exc_info=exc,
        )
        if self.on_fatal is not None:
            self.on_fatal(1)

    def _register_agents(self) -> None:
        settings = self.settings

        async def ingest(stream: faust.StreamT) -> None:
            self.feed.stream = stream
            self.intake = EventBatches(stream, settings.batch_size, settings.batch_within_s)
            async for events in self.intake:
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
