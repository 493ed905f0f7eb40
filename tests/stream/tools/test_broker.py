"""The embedded broker: serves Kafka, stops cleanly, and never outlives its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from stream.errors import BrokerError, ConfigError
from stream.tools.broker import EmbeddedBroker, free_port, kafka_ready


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_starts_serves_kafka_and_stops() -> None:
    with EmbeddedBroker() as broker:
        assert kafka_ready(broker.host, broker.port)
        pid = broker.pid
    assert pid is not None and _wait_dead(pid)
    assert not kafka_ready("127.0.0.1", broker.port, timeout=0.2)


def test_nothing_listening_is_not_ready() -> None:
    assert not kafka_ready("127.0.0.1", free_port(), timeout=0.2)


def test_a_port_already_serving_kafka_is_refused(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerError, match="already serves"):
        EmbeddedBroker(port=broker.port).start()


def test_bad_binary_override_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not an executable"):
        EmbeddedBroker(binary=str(tmp_path / "missing")).start()


def test_no_orphan_when_the_parent_is_killed() -> None:
    code = (
        "import sys, time\n"
        "from stream.tools.broker import EmbeddedBroker\n"
        "b = EmbeddedBroker().start()\n"
        "print(b.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    broker_pid = int(parent.stdout.readline())
    assert _alive(broker_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _wait_dead(broker_pid), "the broker outlived its SIGKILLed parent"


def test_cli_broker_runs_in_foreground_and_stops_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert f"kafka://127.0.0.1:{port}" in line
        assert kafka_ready("127.0.0.1", port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not kafka_ready("127.0.0.1", port, timeout=0.2)
    finally:
        proc.kill()
