"""Phase 7: state size per user, and a worker's recovery time and RSS at ``users`` users."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from stream.features.codec import renamed
from stream.kafka.admin import ensure_topics
from stream.settings import Settings
from stream.tools.bench.common import rss_mb
from stream.tools.bench.records import create_topics, latest_values
from stream.tools.embedded import WorkerProcess, read_worker_metrics
from stream.tools.replay import iter_generated, publish_clock

__all__ = [
    "LEARNERS_TABLE",
    "PER",
    "SCORES_TABLE",
    "USERS_TABLE",
    "StateSample",
    "changelog_topic",
    "fill_changelogs",
    "measure_rocksdb",
    "measure_state",
    "offline_sample",
    "sample_changelogs",
    "scaled",
]

#: Changelog topics of the worker's tables (Faust: ``{app_id}-{table}-changelog``).
USERS_TABLE, SCORES_TABLE, LEARNERS_TABLE = "users", "scores", "learners"
PER = 100_000  # figures are given per this many users


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
    from stream.contract.validation import decode_event
    from stream.errors import Rejected
    from stream.features import FeatureConfig, UserState, apply_event, encode_state
    from stream.settings import Limits
    from stream.tools.generator import GeneratorConfig, generate_events

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


async def fill_changelogs(settings: Settings, sample: StateSample, users: int) -> None:
    """Write ``users`` users to ``settings``' table changelogs: the sample's states repeated
    under new user ids (``m0000000``...), and the sample's learners as they are."""
    await ensure_topics(settings)
    tables = (USERS_TABLE, SCORES_TABLE, LEARNERS_TABLE)
    await create_topics(settings, [changelog_topic(settings, t) for t in tables])
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
            # Same state, another user id (a state holding events of another user is refused
            # as corrupt when it is read back).
            value = renamed(state, user_id)
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
    ``/health`` ready (recovery) and the worker's RSS then, and again once a clock tick has
    touched every user."""
    started = time.monotonic()
    asyncio.run(fill_changelogs(settings, sample, users))
    fill_s = time.monotonic() - started
    worker = WorkerProcess(settings, log_path=log_path).start()
    try:
        started = time.monotonic()
        worker.wait_ready(timeout=120 + users / 200)
        recovery = time.monotonic() - started
        assert worker.proc is not None
        rss = rss_mb(worker.proc.pid)
        table_users = _table_users(worker, users)
        touched = _touch_everyone(settings, worker, users)
    finally:
        worker.stop()
    return {
        "users": users,
        "changelog_fill_s": round(fill_s, 1),
        "recovery_s": round(recovery, 2),
        "worker_rss_mb": round(rss, 1),
        "table_users": int(table_users),
        **touched,
    }


def _table_users(worker: WorkerProcess, users: int) -> float:
    """The worker's ``shopscore_table_users``, once it reflects the recovered table (the gauge
    is refreshed every second), or as it stands after 5 s."""
    deadline = time.monotonic() + 5.0
    table_users = read_worker_metrics(worker.url).users
    while table_users < users and time.monotonic() < deadline:
        time.sleep(0.25)
        table_users = read_worker_metrics(worker.url).users
    return table_users


def _touch_everyone(settings: Settings, worker: WorkerProcess, users: int) -> dict[str, Any]:
    """A clock a minute ahead re-scores every user (each decoded, the state cache filled to
    its bound): the RSS of a worker that has touched all its users, and the tick's time."""
    assert worker.proc is not None
    started = time.monotonic()
    asyncio.run(publish_clock(settings, int(time.time() * 1000) + 60_000))
    deadline = started + 300 + users / 100
    churn = 0.0
    while time.monotonic() < deadline:
        try:  # the tick's chunks hold the event loop for a second or so: /metrics may time out
            produced = read_worker_metrics(worker.url, timeout=10.0).produced_by_topic
        except OSError:
            continue
        churn = produced.get("scores.churn", 0.0)
        if churn >= users:
            return {
                "clock_tick_s": round(time.monotonic() - started, 2),
                "worker_rss_after_tick_mb": round(rss_mb(worker.proc.pid), 1),
            }
        time.sleep(0.5)
    raise TimeoutError(f"a clock tick re-scored {churn:,.0f} of {users:,} users")


def measure_rocksdb(settings: Settings, users: int, workdir: Path) -> dict[str, Any]:
    """``measure_state``'s changelogs (same ``settings``: filled already) read by a worker with
    ``rocksdb://`` on a fresh data directory, stopped, then started again on that directory:
    the first start recovers every record into RocksDB, the restart only the changelog's tail.
    RSS is read once each start is ready."""
    rocks = dataclasses.replace(settings, store="rocksdb://", data_dir=workdir / "rocksdb")
    figures: dict[str, Any] = {"users": users}
    for start in ("first_start", "restart"):
        worker = WorkerProcess(rocks, log_path=workdir / f"rocksdb-{start}.log").start()
        try:
            started = time.monotonic()
            worker.wait_ready(timeout=120 + users / 200)
            figures[f"{start}_s"] = round(time.monotonic() - started, 2)
            assert worker.proc is not None
            figures[f"{start}_rss_mb"] = round(rss_mb(worker.proc.pid), 1)
            figures[f"{start}_table_users"] = int(_table_users(worker, users))
        finally:
            worker.stop()
    return figures


def scaled(measured: float, baseline: float, users: int) -> float:
    """A figure for ``PER`` users from one measured at ``users``: linear above ``baseline``
    (what an empty worker shows), or the figure itself at ``users >= PER``.

    >>> scaled(30.0, 10.0, 10_000)
    210.0
    """
    if users >= PER:
        return measured * PER / users
    return baseline + (measured - baseline) * PER / users
