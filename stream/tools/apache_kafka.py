"""A real Apache Kafka for tests and ``bench``: one KRaft node from the official jars.

Users deploy shopscore on Apache Kafka (the compose file ships ``apache/kafka:4.1.0``); the
embedded Tansu broker differs from it where it matters (no transactions, ListOffsets short of
the end, fetches answered only when their wait ends, no persistence). This starts the same
Kafka version without Docker: the jars are resolved from Maven Central with Maven
(``org.apache.kafka:kafka_2.13`` and its runtime dependencies) into a cache folder, so only
the first run downloads; the log directory is formatted and the node started as broker and
controller on free loopback ports, with the compose file's server settings (``SERVER_SETTINGS``,
listeners aside; a test keeps the two equal). Like the embedded broker the JVM is tied to its
parent (``PR_SET_PDEATHSIG``): an interrupted test run leaves no orphan behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from stream.errors import BrokerError, ConfigError
from stream.kafka.probe import kafka_ready
from stream.settings import Settings
from stream.tools.broker import _die_with_parent, free_port

__all__ = [
    "CLIENT_TIMEOUT_MS",
    "CLUSTER_ID",
    "KAFKA_VERSION",
    "SERVER_SETTINGS",
    "ApacheKafka",
    "default_cache_dir",
    "on_kafka",
    "resolve_jars",
    "server_properties",
]

#: The version the compose file runs (``apache/kafka:<version>``; a test keeps them equal).
KAFKA_VERSION = "4.1.0"
#: The SLF4J binding the Kafka distribution ships beside its log4j2 (the jar alone logs nothing).
_LOG4J_VERSION = "2.24.3"

#: The compose file's ``KAFKA_*`` server settings as ``server.properties`` keys, listeners and
#: log dirs aside (those are this node's own). ``num.partitions`` is compose's default count.
SERVER_SETTINGS: dict[str, str] = {
    "node.id": "1",
    "process.roles": "broker,controller",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "INTERNAL",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "num.partitions": "6",
}
#: The compose file's worker session and rebalance timeouts: Kafka refuses consumer sessions
#: under its ``group.min.session.timeout.ms`` (6 s by default).
CLIENT_TIMEOUT_MS = 10_000

#: The compose file's ``CLUSTER_ID`` (the log directory is formatted for it).
CLUSTER_ID = "c2hvcHNjb3JlLWRlbW8tMQ"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>shopscore</groupId>
  <artifactId>apache-kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = out
"""


def on_kafka(settings: Settings, url: str, **changes: object) -> Settings:
    """``settings`` pointed at the Apache Kafka at ``url``, with session and rebalance timeouts
    of at least ``CLIENT_TIMEOUT_MS``, and ``changes``."""
    return dataclasses.replace(
        settings,
        broker=url,
        session_timeout_ms=max(settings.session_timeout_ms, CLIENT_TIMEOUT_MS),
        rebalance_timeout_ms=max(settings.rebalance_timeout_ms, CLIENT_TIMEOUT_MS),
        **changes,  # type: ignore[arg-type]
    )


def default_cache_dir() -> Path:
    """Where resolved jars are kept: ``SHOPSCORE_KAFKA_CACHE``, else ``.shopscore/kafka`` in
    the current directory (ignored by git)."""
    return Path(os.environ.get("SHOPSCORE_KAFKA_CACHE") or Path.cwd() / ".shopscore" / "kafka")


def resolve_jars(version: str = KAFKA_VERSION, cache_dir: Path | None = None) -> Path:
    """The folder of Kafka ``version``'s runtime jars, resolved with Maven on first use."""
    libs = (cache_dir or default_cache_dir()) / version / "libs"
    done = libs / ".complete"
    if done.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConfigError(
            "Apache Kafka's jars are resolved with Maven: install Maven (and a JDK 17+), or "
            "point SHOPSCORE_BROKER at a running Kafka"
        )
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_POM.format(kafka=version, log4j=_LOG4J_VERSION))
    staging = work / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(work / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0 or not any(staging.glob(f"kafka_2.13-{version}.jar")):
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise BrokerError(f"Maven could not resolve Apache Kafka {version}: {' | '.join(tail)}")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    done.write_text(version + "\n")
    return libs


def server_properties(
    host: str, port: int, controller_port: int, log_dir: Path, **overrides: str
) -> dict[str, str]:
    """This node's ``server.properties``: ``SERVER_SETTINGS`` with its own listeners."""
    props = dict(SERVER_SETTINGS)
    props.update(
        {
            "controller.quorum.voters": f"{props['node.id']}@{host}:{controller_port}",
            "listeners": f"INTERNAL://{host}:{port},CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": f"INTERNAL://{host}:{port}",
            "listener.security.protocol.map": "INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(log_dir),
        }
    )
    props.update(overrides)
    return props


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise ConfigError("Apache Kafka needs a JDK 17+: install one or set JAVA_HOME")
    return java


class ApacheKafka:
    """One Apache Kafka node (broker and controller) on loopback ports; a context manager.

    ``data_dir`` keeps the log directory: ``stop()`` then ``start()`` again restarts the node
    on the same log and ports, as a real outage and recovery would.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        version: str = KAFKA_VERSION,
        cache_dir: Path | None = None,
        log_path: Path | None = None,
        heap: str = "768m",
        start_timeout: float = 90.0,
        log_level: str = "WARN",
        overrides: dict[str, str] | None = None,
        port: int | None = None,
        controller_port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.version = version
        self.cache_dir = cache_dir
        self.log_path = log_path or self.data_dir / "kafka.log"
        self.heap = heap
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.overrides = dict(overrides or {})
        self.port = port or free_port(host)
        self.controller_port = controller_port or free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> ApacheKafka:
        libs = resolve_jars(self.version, self.cache_dir)
        java = _java()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        settings = server_properties(
            self.host, self.port, self.controller_port, self.data_dir / "log", **self.overrides
        )
        props.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(level=self.log_level))
        classpath = f"{libs}/*"
        jvm = [
            java,
            f"-Xmx{self.heap}",
            "-XX:+UseSerialGC",  # two cores here: no parallel collector threads to compete
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            classpath,
        ]
        storage = ["kafka.tools.StorageTool", "format", "--ignore-formatted"]
        formatted = subprocess.run(
            [*jvm, *storage, "-t", CLUSTER_ID, "-c", str(props)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if formatted.returncode != 0:
            raise BrokerError(f"formatting Kafka's log directory failed: {formatted.stderr[-500:]}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*jvm, "kafka.Kafka", str(props)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Until the node answers requests and its metadata lists itself (the controller has
        registered the broker: topics can be created)."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerError(
                    f"Apache Kafka exited with {self.proc.returncode}; log: {self.log_path}"
                )
            if kafka_ready(self.host, self.port) and asyncio.run(self._registered()):
                return
            time.sleep(0.3)
        raise BrokerError(
            f"Apache Kafka not ready after {self.start_timeout:.0f}s; log: {self.log_path}"
        )

    async def _registered(self) -> bool:
        from aiokafka.client import AIOKafkaClient

        client = AIOKafkaClient(
            bootstrap_servers=f"{self.host}:{self.port}", request_timeout_ms=3000
        )
        try:
            await client.bootstrap()
            metadata: Any = await client.fetch_all_metadata()
            return bool(metadata.brokers())
        except Exception:
            return False
        finally:
            await client.close()

    def stop(self, timeout: float = 30.0, *, sig: int = signal.SIGTERM) -> None:
        """Stop the node (SIGTERM: a controlled shutdown; ``sig=SIGKILL`` to crash it)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ApacheKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """``python -m stream.tools.apache_kafka``: resolve the jars now (``make test`` does, so no
    test waits for a download), saying so only when there is something to download."""
    import sys

    libs = (default_cache_dir()) / KAFKA_VERSION / "libs"
    if not (libs / ".complete").exists():
        print(f"resolving Apache Kafka {KAFKA_VERSION}'s jars with Maven (first run only)...",
              file=sys.stderr)  # fmt: skip
    try:
        resolve_jars()
    except (BrokerError, ConfigError) as exc:
        print(f"shopscore: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
