"""``shopscore bench``: throughput, latency, memory and recovery of the full scoring path.

Every figure comes from real processes on a real broker (the embedded one unless
``SHOPSCORE_BROKER`` is set), each phase on its own fresh topics and consumer group:

1. **publish**: ``events`` generated events (the synthetic shop, no invalid ones) are
   published once to the input topics of a fresh topic prefix.
2. **bare**: a bare Faust forwarder (a separate process: consume the three input topics,
   forward each message unchanged to one topic, same consumer settings as the worker) reads
   them; throughput = events / (first consumed → last forwarded record's Kafka timestamp).
3. **full**: one ``shopscore worker`` reads the same events; throughput = events / (first
   consumed → the last score's Kafka timestamp, once all are consumed and every score
   the worker counted is in the broker).
4. **latency**: a fresh worker; a producer publishes live events (``ts`` = now) at a fixed
   ``rate``. Per scored event: the ``scores.churn`` record's Kafka timestamp (the worker's
   producer create time) minus the input record's, matched on ``trigger`` = ``event_id``.
5. **state**: the full phase's changelogs (real feature and scoring states) are sampled and
   written for ``users`` users to a fresh app's changelogs; a worker started on them gives
   the recovery time (start → ``/health`` ready) and its RSS. Below 100,000 users both are
   scaled linearly above an empty worker's (phase 4's), and the JSON says so.

A benchmark is not a test: nothing here asserts on speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from stream import __version__
from stream.broker import EmbeddedBroker, _die_with_parent, find_broker_binary, free_port
from stream.embedded import WorkerProcess, read_worker_metrics
from stream.errors import BrokerError, ShopscoreError
from stream.events import INPUT_TOPICS
from stream.replay import LogEvent, iter_generated, publish
from stream.settings import Settings
from stream.topics import OUTPUT_TOPICS, check_reachable, ensure_topics

__all__ = [
    "BenchOptions",
    "StateSample",
    "fill_changelogs",
    "measure_state",
    "offline_sample",
    "percentiles",
    "run_bench",
]

#: Changelog topics of the worker's tables (Faust: ``{app_id}-{table}-changelog``).
USERS_TABLE, SCORES_TABLE, LEARNERS_TABLE = "users", "scores", "learners"
PER = 100_000  # figures are given per this many users


@dataclass(frozen=True)
class BenchOptions:
    """What to measure. ``users`` is the population of the state phase (scaled to 100,000
    when smaller); ``latency_s`` how long the fixed-rate producer runs. When ``rate`` is
    beyond what the full path sustains (latency is then queueing), ``below_saturation`` adds
    a second latency run at half the measured throughput."""

    events: int = 100_000
    users: int = 100_000
    rate: float = 2_000.0
    latency_s: float = 10.0
    seed: int = 1
    below_saturation: bool = True

    @classmethod
    def quick(cls) -> BenchOptions:
        """Small enough for CI (well under a minute): proves the command works, no more."""
        return cls(events=5_000, users=2_000, latency_s=2.0, below_saturation=False)


Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


# -- reading topics with Kafka timestamps ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes | None
    value: bytes | None
    timestamp: int  # ms: the producer's create time (or the broker's append time)
    partition: int


async def iter_records(
    settings: Settings, topic: str, *, idle_s: float = 5.0
) -> AsyncIterator[Record]:
    """Every record of physical ``topic`` up to its end as of the first fetch of each partition.

    The end is the larger of ListOffsets and a fetch's high watermark: the embedded Tansu
    broker answers ListOffsets short of the true end (see ``stream.dump``).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id="shopscore-bench",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 2**20,
        **settings.kafka_client_options(),
    )
    try:
        await consumer.start()
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer.topics()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        listed = await consumer.end_offsets(tps)
        ends: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + idle_s
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=300, max_records=20_000)
            for tp in tps:
                highwater = consumer.highwater(tp)
                if tp not in ends and (highwater is not None or time.monotonic() > deadline):
                    ends[tp] = max(highwater or 0, listed[tp])
            for tp, records in batch.items():
                for rec in records:
                    if tp not in ends or rec.offset < ends[tp]:
                        yield Record(rec.key, rec.value, rec.timestamp, rec.partition)
            if len(ends) == len(tps):
                positions = [await consumer.position(tp) for tp in tps]
                if all(p >= ends[tp] for p, tp in zip(positions, tps, strict=True)):
                    break
    except KafkaError as exc:
        raise BrokerError(f"reading {topic!r} failed: {exc}") from exc
    finally:
        await consumer.stop()


async def read_records(settings: Settings, topic: str) -> list[Record]:
    return [rec async for rec in iter_records(settings, topic)]


async def latest_values(settings: Settings, topic: str) -> dict[bytes, bytes]:
    """The last value of every key (a changelog's current content)."""
    out: dict[bytes, bytes] = {}
    async for rec in iter_records(settings, topic):
        if rec.key is not None and rec.value is not None:
            out[rec.key] = rec.value
    return out


def _read_until(
    settings: Settings, topic: str, expected: int, timeout: float = 60.0
) -> list[Record]:
    """Read ``topic`` again until it holds at least ``expected`` records (producers flush
    asynchronously: a count the worker reports may reach the broker a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        records = asyncio.run(read_records(settings, topic))
        if len(records) >= expected or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


# -- events ---------------------------------------------------------------------------------


def generate(n: int, seed: int) -> list[LogEvent]:
    """Exactly ``n`` valid synthetic events in event-time order (about 65 per user a month)."""
    from stream.generator import GeneratorConfig, generate_events

    users = max(20, math.ceil(n / 55))
    while True:
        events, _truth = generate_events(GeneratorConfig(users=users, days=30, seed=seed))
        if len(events) >= n:
            return list(iter_generated(events[:n]))
        users = math.ceil(users * 1.3 * n / max(1, len(events)))


def _publish(settings: Settings, events: Sequence[LogEvent]) -> float:
    summary = asyncio.run(publish(settings, events))
    return summary.as_dict()["events_per_s"] or 0.0


# -- phase helpers -----------------------------------------------------------------------------


def _phase_settings(base: Settings, tag: str, phase: str, workdir: Path) -> Settings:
    return dataclasses.replace(
        base,
        app_id=f"{tag}-{phase}",
        topic_prefix=f"{tag}-{phase}.",
        web_port=free_port(),
        data_dir=workdir / phase,
    )


def _poll_started(
    count: Callable[[], float],
    proc: subprocess.Popen[bytes] | None,
    what: str,
    timeout: float = 120.0,
) -> float:
    """Wall time (s) at which ``count()`` first turned positive (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(proc, what)
        try:
            if count() > 0:
                return time.time()
        except OSError:
            pass
        time.sleep(0.02)
    raise ShopscoreError(f"{what} consumed nothing within {timeout:.0f}s")


def _poll_reached(
    count: Callable[[], float],
    n: int,
    proc: subprocess.Popen[bytes] | None,
    what: str,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    last = 0.0
    while time.monotonic() < deadline:
        _check_alive(proc, what)
        with contextlib.suppress(OSError):
            last = count()
        if last >= n:
            return
        time.sleep(0.5)  # the end time comes from Kafka timestamps: poll rarely, cost little
    raise ShopscoreError(f"{what} consumed {last:.0f} of {n} events within {timeout:.0f}s")


def _check_alive(proc: subprocess.Popen[bytes] | None, what: str) -> None:
    if proc is not None and proc.poll() is not None:
        raise ShopscoreError(f"{what} exited with code {proc.returncode}")


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def _budget(n: int) -> float:
    """A generous time limit for consuming ``n`` events (a stuck phase fails, never hangs)."""
    return 120.0 + n / 500


# -- bare forwarder -------------------------------------------------------------------------


def forwarder_app(settings: Settings, out_topic: str) -> Any:
    """A bare Faust app: consume the input topics, forward every message unchanged.

    Its consumer settings are the worker's (``stream.app``); ``GET /count`` says how many
    messages it has forwarded.
    """
    import faust

    from stream.app import _broker_credentials
    from stream.kafka_compat import install as install_kafka_compat

    install_kafka_compat()
    app = faust.App(
        settings.app_id,
        broker=settings.broker,
        store="memory://",
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
        key_serializer="raw",
        value_serializer="raw",
        broker_credentials=_broker_credentials(settings),
    )
    inputs = app.topic(*(settings.topic(t) for t in INPUT_TOPICS))
    out = app.topic(out_topic)
    forwarded = [0]

    async def forward(stream: Any) -> None:
        async for event in stream.events():
            await out.send(key=event.message.key, value=event.message.value)
            forwarded[0] += 1

    app.agent(inputs, name="bench.forward")(forward)

    @app.page("/count")
    async def count(web: Any, request: Any) -> Any:
        return web.json({"forwarded": forwarded[0]})

    return app


def _run_forwarder(out_topic: str) -> None:  # pragma: no cover - runs in the child process
    import faust

    settings = Settings.from_env()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = forwarder_app(settings, out_topic)
    faust.Worker(
        app,
        loop=loop,
        loglevel="warn",
        quiet=True,
        redirect_stdouts=False,
        override_logging=True,
    ).execute_from_commandline()


def _forwarded(url: str) -> float:
    with urllib.request.urlopen(f"{url}/count", timeout=2.0) as resp:
        return float(orjson.loads(resp.read())["forwarded"])


def bare_throughput(
    settings: Settings, n: int, workdir: Path, progress: Progress
) -> dict[str, Any]:
    """Phase 2: the bare forwarder over the ``n`` events already in ``settings``' topics."""
    bare = dataclasses.replace(
        settings, app_id=f"{settings.app_id}-bare", web_port=free_port(), data_dir=workdir / "bare"
    )
    out_topic = settings.topic("bench.forwarded")
    asyncio.run(_create_topics(bare, [out_topic]))
    log_path = workdir / "bare.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream.bench", "forward", out_topic],
            env={**os.environ, **bare.env()},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    url = f"http://{bare.web_host}:{bare.web_port}"
    try:
        started = _poll_started(
            lambda: _forwarded(url), proc, f"the bare forwarder (log {log_path})"
        )
        _poll_reached(lambda: _forwarded(url), n, proc, "the bare forwarder", _budget(n))
    finally:
        _stop(proc)
    records = _read_until(bare, out_topic, n)
    last = max(r.timestamp for r in records) / 1000
    seconds = max(last - started, 1e-3)
    progress(f"bare forwarder: {n:,} events in {seconds:.2f}s = {n / seconds:,.0f} events/s")
    return {
        "events": n,
        "seconds": round(seconds, 3),
        "eps": round(n / seconds, 1),
        "forwarded": len(records),
    }


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- full scoring path ------------------------------------------------------------------------


def _produced_by_topic(url: str) -> dict[str, float]:
    counts = read_worker_metrics(url)
    return dict(getattr(counts, "produced_by_topic", {}) or {})


def full_throughput(
    settings: Settings, n: int, workdir: Path, progress: Progress
) -> tuple[dict[str, Any], WorkerProcess]:
    """Phase 3: one worker over the ``n`` events; returns the figures and the (still
    running) worker, whose changelogs the state phase samples."""
    worker = WorkerProcess(settings, log_path=workdir / "full.log").start()
    try:
        ready_s = worker.wait_ready(timeout=120)
        started = _poll_started(
            lambda: read_worker_metrics(worker.url).consumed,
            worker.proc,
            f"the worker (log {worker.log_path})",
        )
        _poll_reached(
            lambda: read_worker_metrics(worker.url).consumed,
            n,
            worker.proc,
            "the worker",
            _budget(n),
        )
        counts = read_worker_metrics(worker.url)
        produced = _produced_by_topic(worker.url)
    except BaseException:
        worker.stop()
        raise
    last = started
    published: dict[str, int] = {}
    for topic in OUTPUT_TOPICS:
        expected = int(produced.get(topic, 0))
        if not expected:
            continue
        records = _read_until(settings, settings.topic(topic), expected)
        published[topic] = len(records)
        last = max(last, max(r.timestamp for r in records) / 1000)
    seconds = max(last - started, 1e-3)
    progress(
        f"full scoring path: {n:,} events in {seconds:.2f}s = {n / seconds:,.0f} events/s "
        f"({sum(published.values()):,} messages out)"
    )
    return {
        "events": n,
        "seconds": round(seconds, 3),
        "eps": round(n / seconds, 1),
        "applied": int(counts.applied),
        "rejected": int(counts.rejected_total),
        "rejected_by_reason": {k: int(v) for k, v in sorted(counts.rejected.items())},
        "messages_out": published,
        "worker_ready_s": round(ready_s, 2),
    }, worker


# -- latency ----------------------------------------------------------------------------------


def percentiles(values: Sequence[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles, plus the max.

    >>> percentiles([5, 1, 4, 2, 3], (50, 100))
    {'p50': 3, 'p100': 5, 'max': 5}
    """
    ordered = sorted(values)
    out: dict[str, float] = {}
    for q in qs:
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        out[f"p{q:g}"] = ordered[rank - 1]
    out["max"] = ordered[-1]
    return out


async def _paced_publish(
    settings: Settings, events: Sequence[LogEvent], rate: float
) -> tuple[dict[str, int], float]:
    """Publish ``events`` as live traffic (``ts`` and record timestamp = now) at ``rate``
    events/s; returns each event id's record timestamp and the achieved rate."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id="shopscore-bench-latency",
        linger_ms=0,
        acks=1,
        **settings.kafka_client_options(),
    )
    from stream.events import TOPIC_OF_KIND

    sent: dict[str, int] = {}
    pending: list[asyncio.Future[Any]] = []
    await producer.start()
    started = time.monotonic()
    try:
        for i, event in enumerate(events):
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0.001:
                await asyncio.sleep(ahead)
            obj = orjson.loads(event.payload)
            now_ms = int(time.time() * 1000)
            obj["ts"] = now_ms
            sent[obj["event_id"]] = now_ms
            pending.append(
                await producer.send(
                    settings.topic(TOPIC_OF_KIND[event.kind]),
                    value=orjson.dumps(obj),
                    key=event.key,
                    timestamp_ms=now_ms,
                )
            )
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        elapsed = time.monotonic() - started
    finally:
        await producer.stop()
    return sent, len(events) / max(elapsed, 1e-3)


def latency(
    settings: Settings,
    events: Sequence[LogEvent],
    rate: float,
    workdir: Path,
    progress: Progress,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Phase 4: end-to-end latency at ``rate``; also the empty worker's ready time and RSS
    (the baseline the state phase scales above)."""
    worker = WorkerProcess(settings, log_path=Path(settings.data_dir).with_suffix(".log")).start()
    try:
        ready_s = worker.wait_ready(timeout=120)
        assert worker.proc is not None
        baseline = {"ready_s": round(ready_s, 2), "rss_mb": round(_rss_mb(worker.proc.pid), 1)}
        sent, achieved = asyncio.run(_paced_publish(settings, events, rate))
        _poll_reached(
            lambda: read_worker_metrics(worker.url).consumed,
            len(events),
            worker.proc,
            "the worker",
            _budget(len(events)),
        )
        expected = int(_produced_by_topic(worker.url).get("scores.churn", 0))
        counts = read_worker_metrics(worker.url)
    finally:
        worker.stop()
    records = _read_until(settings, settings.topic("scores.churn"), expected)
    latencies: list[float] = []
    for rec in records:
        trigger = orjson.loads(rec.value or b"{}").get("trigger")
        stamp = sent.get(trigger) if isinstance(trigger, str) else None
        if stamp is not None:
            latencies.append(float(rec.timestamp - stamp))
    if not latencies:
        raise ShopscoreError("no scores.churn record matched an event sent in the latency phase")
    figures: dict[str, Any] = {k: round(v, 1) for k, v in percentiles(latencies).items()}
    figures.update(
        mean=round(statistics.fmean(latencies), 2),
        rate_eps=round(achieved, 1),
        target_rate_eps=rate,
        events=len(events),
        scored_events=len(latencies),
        rejected=int(counts.rejected_total),
        resolution_ms=1,
    )
    progress(
        f"latency at {achieved:,.0f} events/s: p50 {figures['p50']:.0f} ms, "
        f"p99 {figures['p99']:.0f} ms, max {figures['max']:.0f} ms "
        f"({len(latencies):,} scored events)"
    )
    return figures, baseline


# -- state size, RSS and recovery -------------------------------------------------------------


@dataclass
class StateSample:
    """Real encoded table values to replicate: per user the feature state (``users``) and the
    scoring state (``scores``, same order, may be empty), and the learners per partition."""

    users: list[bytes]
    scores: list[bytes] = field(default_factory=list)
    learners: dict[bytes, bytes] = field(default_factory=dict)

    def bytes_per_user(self) -> dict[str, float]:
        users = [len(v) for v in self.users]
        scores = [len(v) for v in self.scores] or [0]
        return {
            "features_mean": round(statistics.fmean(users), 1),
            "features_p95": float(sorted(users)[int(0.95 * (len(users) - 1))]),
            "scoring_mean": round(statistics.fmean(scores), 1),
            "mean": round(statistics.fmean(users) + statistics.fmean(scores), 1),
        }


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"


def sample_changelogs(settings: Settings) -> StateSample:
    """The latest value of every key in a worker's users, scores and learners changelogs."""

    def latest(table: str) -> dict[bytes, bytes]:
        return asyncio.run(latest_values(settings, changelog_topic(settings, table)))

    users = latest(USERS_TABLE)
    scores = latest(SCORES_TABLE)
    keys = sorted(users)
    return StateSample(
        users=[users[k] for k in keys],
        scores=[scores[k] for k in keys if k in scores],
        learners=latest(LEARNERS_TABLE),
    )


def offline_sample(users: int = 5_000, days: float = 30, seed: int = 3) -> StateSample:
    """Feature states (no scoring state) of a generated population, built by the feature core
    alone: no broker, no models (``scripts/measure_state.py``)."""
    from stream.errors import Rejected
    from stream.features import FeatureConfig, UserState, apply_event, encode_state
    from stream.generator import GeneratorConfig, generate_events
    from stream.settings import Limits
    from stream.validation import decode_event

    events, _truth = generate_events(GeneratorConfig(users=users, days=days, seed=seed))
    config, limits = FeatureConfig(), Limits()
    states: dict[str, UserState] = {}
    for event in iter_generated(events):
        try:
            clean = decode_event(event.kind, event.payload, now_ms=None, limits=limits)
        except Rejected:
            continue
        state = states.get(clean.user_id)
        if state is None:
            state = states[clean.user_id] = UserState(clean.user_id)
        apply_event(state, clean, config)
    return StateSample(users=[encode_state(s) for s in states.values()])


async def _create_topics(settings: Settings, names: Iterable[str]) -> None:
    """Create physical topics with ``settings.partitions`` partitions where missing."""
    check_reachable(settings)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id="shopscore-bench",
        **settings.kafka_client_options(),
    )
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        wanted = [n for n in names if n not in existing]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(n, settings.partitions, settings.replication_factor) for n in wanted]
                )
    finally:
        await admin.close()


async def fill_changelogs(settings: Settings, sample: StateSample, users: int) -> None:
    """Write ``users`` users to ``settings``' table changelogs: the sample's states repeated
    under new user ids (``m0000000``...), and the sample's learners as they are."""
    await ensure_topics(settings)
    tables = (USERS_TABLE, SCORES_TABLE, LEARNERS_TABLE)
    await _create_topics(settings, [changelog_topic(settings, t) for t in tables])
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(),
        linger_ms=20,
        max_batch_size=512 * 1024,
        **settings.kafka_client_options(),
    )
    await producer.start()
    users_topic = changelog_topic(settings, USERS_TABLE)
    scores_topic = changelog_topic(settings, SCORES_TABLE)
    pending: list[asyncio.Future[Any]] = []
    try:
        for i in range(users):
            user_id = f"m{i:07d}"
            key = user_id.encode()
            state = sample.users[i % len(sample.users)]
            # Same state, another user id: rewrite the id wherever it stands as a whole JSON
            # string (the state's own field and each tail event's: a state holding events of
            # another user is refused as corrupt when it is read back).
            value = state.replace(state.split(b",", 2)[1], orjson.dumps(user_id))
            pending.append(await producer.send(users_topic, key=key, value=value))
            if sample.scores:
                scores = sample.scores[i % len(sample.scores)]
                pending.append(await producer.send(scores_topic, key=key, value=scores))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        for key, value in sample.learners.items():
            pending.append(
                await producer.send(changelog_topic(settings, LEARNERS_TABLE), key=key, value=value)
            )
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def measure_state(
    settings: Settings, sample: StateSample, users: int, log_path: Path | None = None
) -> dict[str, Any]:
    """Fill ``settings``' changelogs with ``users`` users, start a worker on them: the time to
    ``/health`` ready (recovery) and the worker's RSS then."""
    started = time.monotonic()
    asyncio.run(fill_changelogs(settings, sample, users))
    fill_s = time.monotonic() - started
    worker = WorkerProcess(settings, log_path=log_path).start()
    try:
        started = time.monotonic()
        worker.wait_ready(timeout=120 + users / 200)
        recovery = time.monotonic() - started
        assert worker.proc is not None
        rss = _rss_mb(worker.proc.pid)
        # The gauge is refreshed every second: read it once it reflects the recovered table.
        deadline = time.monotonic() + 5.0
        table_users = read_worker_metrics(worker.url).users
        while table_users < users and time.monotonic() < deadline:
            time.sleep(0.25)
            table_users = read_worker_metrics(worker.url).users
    finally:
        worker.stop()
    return {
        "users": users,
        "changelog_fill_s": round(fill_s, 1),
        "recovery_s": round(recovery, 2),
        "worker_rss_mb": round(rss, 1),
        "table_users": int(table_users),
    }


def scaled(measured: float, baseline: float, users: int) -> float:
    """A figure for ``PER`` users from one measured at ``users``: linear above ``baseline``
    (what an empty worker shows), or the figure itself at ``users >= PER``.

    >>> scaled(30.0, 10.0, 10_000)
    210.0
    """
    if users >= PER:
        return measured * PER / users
    return baseline + (measured - baseline) * PER / users


# -- the whole run ----------------------------------------------------------------------------


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "shopscore": __version__}
    for dist in ("faust-streaming", "aiokafka", "onnxruntime", "river", "orjson", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _tansu_version() -> str | None:
    try:
        out = subprocess.run(
            [find_broker_binary(), "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, ShopscoreError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _model_versions(settings: Settings) -> dict[str, str]:
    from stream.models.registry import load_models

    return {name: m.version for name, m in load_models(settings.model_dir).items()}


def run_bench(
    settings: Settings, options: BenchOptions, *, progress: Progress = _stderr
) -> dict[str, Any]:
    """Run every phase and return the report (see the module docstring)."""
    if options.events < 100 or options.users < 1 or options.rate <= 0:
        raise ShopscoreError("bench needs --events >= 100, --users >= 1 and --rate > 0")
    began = time.monotonic()
    models = _model_versions(settings)  # fail fast, before any process starts
    workdir = Path(tempfile.mkdtemp(prefix="shopscore-bench-"))
    tag = f"bench{os.getpid()}x{uuid.uuid4().hex[:6]}"
    broker: EmbeddedBroker | None = None
    report: dict[str, Any] = {}
    ok = False
    try:
        if settings.broker is None:
            broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
            settings = settings.with_broker(broker.url)
            broker_info: dict[str, Any] = {
                "kind": "embedded",
                "name": _tansu_version() or "tansu",
                "storage": "memory",
                "url": broker.url,
            }
        else:
            check_reachable(settings)
            broker_info = {"kind": "configured", "url": settings.broker}
        progress(f"broker {settings.broker}; work dir {workdir}")

        n = options.events
        progress(f"[1/5] generating and publishing {n:,} events")
        events = generate(n, options.seed)
        tput = _phase_settings(settings, tag, "tput", workdir)
        publish_eps = _publish(tput, events)
        progress(f"published {n:,} events at {publish_eps:,.0f} events/s")

        progress("[2/5] bare Faust forwarder")
        bare = bare_throughput(tput, n, workdir, progress)

        progress("[3/5] full scoring path (one shopscore worker)")
        full, worker = full_throughput(tput, n, workdir, progress)
        try:
            sample = sample_changelogs(tput)
        finally:
            worker.stop()

        lat_n = max(100, int(options.rate * options.latency_s))
        progress(f"[4/5] latency: {lat_n:,} live events at {options.rate:,.0f} events/s")
        lat_events = events[:lat_n] if lat_n <= len(events) else generate(lat_n, options.seed + 1)
        lat, baseline = latency(
            _phase_settings(settings, tag, "latency", workdir),
            lat_events,
            options.rate,
            workdir,
            progress,
        )
        lat["saturated"] = lat["rate_eps"] > 0.9 * full["eps"]
        below: dict[str, Any] | None = None
        if lat["saturated"] and options.below_saturation:
            rate = max(50.0, round(full["eps"] / 2, -1))
            below_n = max(100, int(rate * options.latency_s))
            progress(f"[4/5] {options.rate:,.0f} events/s saturates the worker: latency again "
                     f"at {rate:,.0f} events/s (half its throughput)")  # fmt: skip
            below, _ = latency(
                _phase_settings(settings, tag, "latency-below", workdir),
                events[:below_n] if below_n <= len(events) else lat_events[:below_n],
                rate,
                workdir,
                progress,
            )

        users = options.users
        progress(
            f"[5/5] state: {users:,} users ({len(sample.users):,} real states repeated), "
            "recovery and RSS"
        )
        state = measure_state(
            _phase_settings(settings, tag, "state", workdir),
            sample,
            users,
            workdir / "state.log",
        )
        sizes = sample.bytes_per_user()
        recovery_100k = scaled(state["recovery_s"], baseline["ready_s"], users)
        rss_100k = scaled(state["worker_rss_mb"], baseline["rss_mb"], users)
        progress(
            f"state: {sizes['mean']:,.0f} B/user; {users:,} users recovered in "
            f"{state['recovery_s']:.1f}s, RSS {state['worker_rss_mb']:,.0f} MB"
        )

        report = {
            "throughput_eps": full["eps"],
            "bare_throughput_eps": bare["eps"],
            "ratio_to_bare": round(full["eps"] / bare["eps"], 3),
            "latency_ms": lat,
            "latency_below_saturation_ms": below,
            "rss_mb_per_100k_users": round(rss_100k, 1),
            "state_bytes_per_user": sizes["mean"],
            "recovery_s_per_100k_users": round(recovery_100k, 1),
            "measured_users": users,
            "scaled_to_100k": users < PER,
            "scaling": (
                "linear above an empty worker (baseline): baseline + (measured - baseline) "
                f"* 100000 / {users}"
                if users < PER
                else "measured directly"
            ),
            "throughput": {"full": full, "bare": bare, "publish_eps": publish_eps},
            "state": {
                **state,
                "bytes_per_user": sizes,
                "sample_users": len(sample.users),
                "empty_worker": baseline,
            },
            "versions": versions(),
            "models": models,
            "broker": broker_info,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "settings": {
                "partitions": settings.partitions,
                "batch_size": settings.batch_size,
                "batch_within_s": settings.batch_within_s,
                "store": settings.store,
            },
            "options": dataclasses.asdict(options),
            "elapsed_s": round(time.monotonic() - began, 1),
        }
        ok = True
    finally:
        if broker is not None:
            broker.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            progress(f"logs kept in {workdir}")
    return report


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - child entry point
    """``python -m stream.bench forward TOPIC``: the bare forwarder of phase 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "forward":
        raise SystemExit("usage: python -m stream.bench forward TOPIC (run by shopscore bench)")
    _run_forwarder(args[1])


if __name__ == "__main__":  # pragma: no cover
    main()
