"""Fixtures of the reliability tests: real broker, real ``shopscore worker`` processes, no mocks.

The offline reference (``offline_views`` / ``view_mismatches``) and the CLI replay helper are
the worker-ingest tests' own, loaded from ``tests/stream/worker/test_worker_ingest.py``, so there is
one definition of "the worker agrees with the offline computation".
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest
from aiokafka import AIOKafkaProducer

from stream.kafka.admin import ensure_topics
from stream.settings import Settings
from stream.tools.embedded import WorkerProcess
from stream.tools.generator import GeneratorConfig, write_log


@pytest.fixture(scope="session")
def helpers() -> ModuleType:
    path = Path(__file__).parents[1] / "stream" / "worker" / "test_worker_ingest.py"
    spec = importlib.util.spec_from_file_location("reliability_worker_ingest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Backlog:
    """A worker part-way (a fifth) through a generated log replayed before it started."""

    worker: WorkerProcess
    pid: int
    expected: dict[str, Any]
    published: int
    consumed: float

    def finished(self, settle: Any, wait_lag_zero: Any) -> None:
        """The same worker process (never restarted) read everything, agrees with the offline
        views, and is ready."""
        worker = self.worker
        wait_lag_zero([worker], at_least=self.published)
        settle([worker.url], self.expected)
        assert worker.proc is not None and worker.proc.poll() is None
        assert worker.proc.pid == self.pid
        assert (worker.health() or {}).get("status") == "ready"


@pytest.fixture
def mid_backlog(
    helpers: ModuleType, start_worker: Any, wait: Any, worker_counts: Any, tmp_path: Path
) -> Callable[[Settings, int], Backlog]:
    """``mid_backlog(settings, seed)``: 250 users over 15 days (1% duplicates) replayed, then
    a worker started on them and left to read a fifth."""

    def start(settings: Settings, seed: int) -> Backlog:
        log = tmp_path / "log.jsonl"
        write_log(GeneratorConfig(users=250, days=15, seed=seed, duplicate_fraction=0.01), log)
        expected, _ = helpers.offline_views(log, int(time.time() * 1000))
        published = helpers.replay_cli(settings, log)
        worker = start_worker(settings)
        wait(lambda: worker_counts(worker).consumed >= published // 5, 120, 0.05)
        assert worker.proc is not None
        consumed = worker_counts(worker).consumed
        return Backlog(worker, worker.proc.pid, expected, published, consumed)

    return start


@pytest.fixture
def kill_repeatedly(start_worker: Any, wait: Any, worker_counts: Any) -> Callable[..., Any]:
    """``kill_repeatedly(settings, kills, published, rng)``: start a worker, and ``kills`` times
    SIGKILL it at a random point of its work and start another; returns the last worker and
    how many messages each killed one had consumed."""

    def run(settings: Settings, kills: int, published: int, rng: Any) -> tuple[Any, list[int]]:
        worker = start_worker(settings, name="worker-0")
        killed_at: list[int] = []
        for kill in range(1, kills + 1):
            # A random point: after this process consumed a random number of messages, or
            # earlier still, right at its start (first batch in flight).
            threshold = rng.choice([1, rng.randrange(100, published // (2 * kills))])
            wait(lambda w=worker, t=threshold: worker_counts(w).consumed >= t, 120, 0.05)
            time.sleep(rng.uniform(0, 0.2))
            killed_at.append(int(worker_counts(worker).consumed))
            worker.kill()
            worker = start_worker(settings, name=f"worker-{kill}")
        return worker, killed_at

    return run


@pytest.fixture
def produce() -> Callable[..., int]:
    return _produce


@pytest.fixture
def send_raw() -> Callable[..., None]:
    return _send_raw


@pytest.fixture
def rss_mb() -> Callable[[WorkerProcess], float]:
    return _rss_mb


@pytest.fixture
def settle(helpers: ModuleType, wait: Any) -> Callable[..., None]:
    return lambda urls, expected, timeout=90: _settle(helpers, urls, expected, wait, timeout)


@pytest.fixture
def wait_lag_zero(worker_counts: Any, wait: Any) -> Callable[..., None]:
    return lambda workers, at_least=1: _wait_lag_zero(worker_counts, workers, wait, at_least)


def _produce(settings: Settings, messages: Iterable[tuple[Any, ...]]) -> int:
    """Publish (contract topic, key, raw value[, event time]) in order, as fast as the broker
    takes them. Like ``shopscore replay``, an event time more than half the allowed lateness
    past the last barrier first waits for everything sent before it (docs/benchmarks.md,
    "Known limitations": a running worker must not see one partition hours ahead of another)."""
    step = settings.allowed_lateness_ms // 2

    async def send() -> int:
        # As replay does: a topic created by the first send would get the broker's default
        # partition count (num.partitions), not the worker's.
        await ensure_topics(settings)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers(),
            linger_ms=5,
            max_request_size=4 * 2**20,
        )
        await producer.start()
        sent = 0
        barrier: int | None = None
        try:
            pending: list[asyncio.Future[Any]] = []
            for topic, key, value, *ts in messages:
                if ts and ts[0] is not None:
                    if barrier is None:
                        barrier = ts[0]
                    elif ts[0] > barrier + step:
                        await asyncio.gather(*pending)
                        pending.clear()
                        barrier = ts[0]
                pending.append(await producer.send(settings.topic(topic), value=value, key=key))
                sent += 1
                if len(pending) >= 1000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
        finally:
            await producer.stop()
        return sent

    return asyncio.run(send())


def _send_raw(settings: Settings, records: Iterable[tuple[str, int, bytes, bytes]]) -> None:
    """(physical topic, partition, key, value), produced as they are, in order: what anyone
    with write access to the broker can do to any topic, changelogs included."""

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers())
        await producer.start()
        try:
            for topic, partition, key, value in records:
                await producer.send_and_wait(topic, value=value, key=key, partition=partition)
        finally:
            await producer.stop()

    asyncio.run(send())


def _rss_mb(worker: WorkerProcess) -> float:
    assert worker.proc is not None
    return psutil.Process(worker.proc.pid).memory_info().rss / 2**20


def _settle(helpers: ModuleType, urls: list[str], expected: dict, wait: Any, timeout: float = 90):
    """Wait until every user's view on every URL equals the offline one (duplicates may be
    higher after redelivery); fail with a sample of the differences."""
    mismatches: list = []

    def agreed() -> bool:
        mismatches[:] = [
            (url, m)
            for url in urls
            for m in helpers.view_mismatches(url, expected, redelivery=True)
        ]
        return not mismatches

    try:
        wait(agreed, timeout, 2.0)
    except AssertionError:
        users = sorted({user for _url, (user, _diff) in mismatches})
        sample = [(url, user, _brief(diff)) for url, (user, diff) in mismatches[:4]]
        pytest.fail(f"{len(users)} users' views differ from offline, e.g. {sample}")


def _brief(diff: Any) -> Any:
    """The differing fields only, features included (got, offline)."""
    if not isinstance(diff, dict):
        return diff
    out = {}
    for key, (got, want) in diff.items():
        if key == "features":
            out.update({f: (got[f], want[f]) for f in want if got.get(f) != want[f]})
        elif key not in ("top_categories",):
            out[key] = (got, want)
    return out


def _wait_lag_zero(worker_counts: Any, workers: list[WorkerProcess], wait: Any, at_least: int):
    """Until the workers together consumed ``at_least`` messages and report no lag."""

    def done() -> bool:
        counts = [worker_counts(w) for w in workers]
        return sum(c.consumed for c in counts) >= at_least and all(c.lag == 0 for c in counts)

    wait(done, 240, 0.5)
    time.sleep(0.5)
