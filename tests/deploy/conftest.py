"""A real Prometheus (Debian's ``prometheus`` package) scraping a real worker during a replay.

Prometheus runs on a free loopback port with its own temporary config and storage, started and
stopped here; a system service on :9090, if any, is never touched. A missing binary fails the
tests loudly (``.ci/run`` installs it): skipping would hide an untested deployment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.settings import Settings
from stream.tools.apache_kafka import on_kafka
from stream.tools.broker import _die_with_parent, free_port
from stream.tools.embedded import WorkerProcess
from stream.tools.generator import GeneratorConfig, truth_path, write_log

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"


def binary(name: str) -> str:
    """Path of a Prometheus binary; fails (never skips) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: run scripts/install-test-tools (`make test` does)",
            pytrace=False,
        )
    return path


def poll(predicate: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """Poll until ``predicate`` returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")


class PromQLError(AssertionError):
    pass


class Prometheus:
    """A Prometheus server of our own: ``start()``, ``query()``, ``stop()``."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.workdir = workdir
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Prometheus:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"prometheus not ready after {timeout}s: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH; the ``data`` of a success, else ``PromQLError`` with the error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422: a bad query, with a JSON error body
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PromQLError(f"{params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result: a list of ``{"metric": labels, "value": [t, "v"]}``."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, expr: str) -> float | None:
        """The value of a query that yields one sample (``None`` when it yields none)."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def by(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}


def scrape_config_for(target: str) -> dict[str, Any]:
    """The deployed Prometheus config with its service discovery replaced by one static target,
    scraping and evaluating every second; job name and rule files stay those of ``deploy/``."""
    deployed = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = []
    for job in deployed["scrape_configs"]:
        job = {k: v for k, v in job.items() if not k.endswith("_sd_configs")}
        job["static_configs"] = [{"targets": [target]}]
        job["scrape_interval"] = job["scrape_timeout"] = "1s"
        jobs.append(job)
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_CONFIG.parent / f) for f in deployed.get("rule_files", [])],
        "scrape_configs": jobs,
    }


@pytest.fixture(scope="session")
def promtool() -> str:
    return binary("promtool")


@dataclass
class Scraped:
    """A worker that processed a replayed log while Prometheus scraped it."""

    prometheus: Prometheus
    worker: WorkerProcess
    settings: Settings
    log: Path
    published: int
    truth: dict[str, Any]
    job: str


@pytest.fixture(scope="session", params=["embedded", "kafka"])
def scraped(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scraped]:
    """On the embedded broker, and on Apache Kafka (the session's ``kafka`` node)."""
    tmp = tmp_path_factory.mktemp("scraped")
    tag = f"p{os.getpid()}x{uuid.uuid4().hex[:6]}"
    url = request.getfixturevalue("kafka" if request.param == "kafka" else "broker").url
    settings = Settings(
        broker=url,
        app_id=f"shopscore-{tag}",
        topic_prefix=f"{tag}.",
        partitions=4,
        web_port=free_port(),
        data_dir=tmp / "data",
        rebalance_timeout_ms=2_000,
    )
    if request.param == "kafka":
        settings = on_kafka(settings, url)
    worker = WorkerProcess(settings, log_path=tmp / "worker.log").start()
    prometheus: Prometheus | None = None
    try:
        try:
            worker.wait_ready(timeout=90)
        except Exception as exc:
            pytest.fail(f"worker not ready ({exc}): {(tmp / 'worker.log').read_text()[-3000:]}")
        config = scrape_config_for(f"127.0.0.1:{settings.web_port}")
        prometheus = Prometheus(config, tmp).start()
        job = config["scrape_configs"][0]["job_name"]
        poll(lambda: prometheus.value(f'up{{job="{job}"}}') == 1.0, 30)

        log = tmp / "log.jsonl"
        write_log(
            GeneratorConfig(users=300, days=10, seed=5, bad_fraction=0.02, duplicate_fraction=0.02),
            log,
        )
        truth = json.loads(truth_path(log).read_text())
        result = subprocess.run(
            [sys.executable, "-m", "stream", "replay", str(log)],
            env={**os.environ, **settings.env()},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        published = json.loads(result.stdout.strip().splitlines()[-1])["published"]
        consumed = f'sum(shopscore_events_consumed_total{{job="{job}"}})'
        poll(lambda: prometheus.value(consumed) == published, 180)
        # Consumed is not yet applied: an event held for event-time alignment is counted as
        # applied, rejected or a duplicate only when released. Wait for every outcome.
        outcomes = " + ".join(
            f'sum(shopscore_events_{name}_total{{job="{job}"}})'
            for name in ("applied", "rejected", "duplicate")
        )
        poll(lambda: prometheus.value(outcomes) == published, 180)
        yield Scraped(prometheus, worker, settings, log, published, truth, job)
    finally:
        if prometheus is not None:
            prometheus.stop()
        worker.stop(timeout=10)
