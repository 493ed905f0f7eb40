"""Shared fixtures: real brokers started once per test session, and per-test isolation.

The broker is the embedded Tansu broker that ``shopscore run`` uses; a test marked
``both_brokers`` runs a second time on Apache Kafka (``stream.tools.apache_kafka``: the compose
file's version and server settings, from the official jars), its ``settings`` pointing there.
If a broker cannot start, the session fails loudly: skipping would hide a broken install. Each
test gets its own topic prefix, consumer group (app id), web port and data directory, so tests
never see each other's data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.settings import Settings
from stream.tools.apache_kafka import ApacheKafka, on_kafka
from stream.tools.broker import EmbeddedBroker, free_port
from stream.tools.dump import dump_topic
from stream.tools.embedded import WorkerProcess, read_worker_metrics

_counter = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    embedded = EmbeddedBroker(binary=Settings.from_env().broker_bin, log_path=log)
    try:
        embedded.start()
    except Exception as exc:  # fail, never skip: see module docstring
        pytest.fail(f"embedded broker failed to start: {exc}; log: {log}", pytrace=False)
    yield embedded
    embedded.stop()


#: The brokers a ``both_brokers`` test runs on (ids of its ``settings`` parameter).
BROKER_KINDS = ("embedded", "kafka")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "settings" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_brokers"
    ):
        metafunc.parametrize("settings", BROKER_KINDS, indirect=True)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    """One Apache Kafka node for the session (jars cached under ``.shopscore/kafka``)."""
    node = ApacheKafka(tmp_path_factory.mktemp("kafka"))
    try:
        node.start()
    except Exception as exc:  # fail, never skip: see module docstring
        pytest.fail(f"Apache Kafka failed to start: {exc}", pytrace=False)
    yield node
    node.stop()


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings isolated to this test: unique topics, group, port and data dir; on the embedded
    broker unless the test is parametrized with ``kafka`` (``both_brokers``)."""
    kind = getattr(request, "param", "embedded")
    tag = f"t{os.getpid()}x{next(_counter)}x{uuid.uuid4().hex[:6]}"
    url = request.getfixturevalue("kafka" if kind == "kafka" else "broker").url
    settings = Settings(
        broker=url,
        app_id=f"shopscore-{tag}",
        topic_prefix=f"{tag}.",
        partitions=4,
        web_port=free_port(),
        data_dir=tmp_path / "data",
        log_level="info",
        rebalance_timeout_ms=2_000,
    )
    return on_kafka(settings, url) if kind == "kafka" else settings


@pytest.fixture
def broker_kind(request: pytest.FixtureRequest) -> str:
    """Which broker this test's ``settings`` point at: ``embedded`` or ``kafka``."""
    callspec = getattr(request.node, "callspec", None)
    return str(callspec.params.get("settings", "embedded")) if callspec else "embedded"


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start ``shopscore worker`` as a child process and wait until it is ready."""
    workers: list[WorkerProcess] = []

    def start(settings: Settings, *, name: str = "worker", **changes: Any) -> WorkerProcess:
        if changes:
            settings = dataclasses.replace(settings, **changes)
        proc = WorkerProcess(settings, log_path=tmp_path / f"{name}.log")
        workers.append(proc.start())
        try:
            proc.wait_ready(timeout=90)
        except Exception:
            proc.kill()
            log = (tmp_path / f"{name}.log").read_text(errors="replace")[-4000:]
            pytest.fail(f"{name} did not become ready; log tail:\n{log}")
        return proc

    yield start
    for proc in workers:
        proc.stop(timeout=10)


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")


@pytest.fixture
def dump() -> Callable[..., list[dict[str, Any]]]:
    """``dump(settings, topic)``: the records of a contract topic, as ``shopscore dump`` reads them."""

    def read(settings: Settings, topic: str, latest_per_key: bool = False) -> list[dict[str, Any]]:
        return asyncio.run(dump_topic(settings, topic, latest_per_key=latest_per_key))

    return read


@pytest.fixture
def worker_counts() -> Callable[[WorkerProcess], Any]:
    return lambda proc: read_worker_metrics(proc.url)


@pytest.fixture
def wait() -> Callable[..., Any]:
    return wait_until
