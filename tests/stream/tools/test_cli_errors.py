"""Every mistake a user can make at the command line ends in one line on stderr, never a traceback.

Each case runs the real CLI as a subprocess (as a user's shell would), and checks the exit status
(2: what was asked is wrong, 1: it could not be done), that stderr is one line starting with
``shopscore: error:``, and that it names what to change.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stream.tools.broker import EmbeddedBroker

NOWHERE = "kafka://127.0.0.1:1"  # no broker needed: each case fails before connecting


def shopscore(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHOPSCORE_")}
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        env={**clean, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def worker_settings(url: str, tmp_path: Path, name: str, **changes: Any) -> Any:
    """Settings of a worker of its own (app id, topics, port, data dir) on the broker ``url``."""
    from stream.settings import Settings
    from stream.tools.broker import free_port

    return Settings(
        broker=url,
        app_id=f"shopscore-{name}",
        topic_prefix=f"{name}-{free_port()}.",
        web_port=free_port(),
        data_dir=tmp_path / "data",
        **changes,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int, *words: str):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == status, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("shopscore: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", ("it is empty",)),
        (b"this is not json\n", ("none of its 1 lines",)),
        (bytes(range(256)) * 4, ("no event to publish",)),
    ],
    ids=["empty", "not-json", "random-bytes"],
)
def test_replay_of_a_file_without_events(tmp_path: Path, content: bytes, words) -> None:
    log = tmp_path / "log.jsonl"
    log.write_bytes(content)
    result = shopscore("--broker", NOWHERE, "replay", str(log))
    assert_one_line_error(result, 2, str(log), *words)


def test_replay_refuses_a_negative_rate(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"type": "click", "user_id": "u1"}\n')
    result = shopscore("--broker", NOWHERE, "replay", "--rate", "-5", str(log))
    assert_one_line_error(result, 2, "--rate", "shopscore replay --help")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--days", "-1"], "--days"),
        (["--bad-fraction", "2"], "--bad-fraction"),
        (["--duplicate-fraction", "-0.1"], "--duplicate-fraction"),
        (["--users", "0"], "--users"),
    ],
)
def test_generate_refuses_out_of_range_options(tmp_path: Path, args, option) -> None:
    result = shopscore("generate", *args, "--out", str(tmp_path / "x.jsonl"))
    assert_one_line_error(result, 2, option)
    assert not (tmp_path / "x.jsonl").exists()


def test_generate_into_a_path_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = shopscore("generate", "--users", "2", "--out", str(blocker / "x.jsonl"))
    assert_one_line_error(result, 1, "cannot write", str(blocker / "x.jsonl"))


def test_dump_into_a_missing_directory_fails_before_reading(tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "x.jsonl"
    result = shopscore("--broker", NOWHERE, "dump", "clicks", "--out", str(out))
    assert_one_line_error(result, 1, "cannot write", str(out))


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"SHOPSCORE_WEB_PORT": "99999"}, ("SHOPSCORE_WEB_PORT", "1 to 65535")),
        ({"SHOPSCORE_PARTITIONS": "x"}, ("SHOPSCORE_PARTITIONS", "whole number")),
        ({"SHOPSCORE_BROKER_BIN": "/nonexistent"}, ("SHOPSCORE_BROKER_BIN", "executable")),
        ({"SHOPSCORE_MIN_TS": "last tuesday"}, ("SHOPSCORE_MIN_TS", "ISO-8601")),
    ],
    ids=["web-port", "partitions", "broker-bin", "min-ts"],
)
def test_malformed_variables_are_configuration_errors(env, words) -> None:
    result = shopscore("worker", env={"SHOPSCORE_BROKER": NOWHERE, **env})
    assert_one_line_error(result, 2, *words)


def test_a_flag_out_of_range_is_refused_like_its_variable() -> None:
    result = shopscore("--broker", NOWHERE, "--web-port", "99999", "worker")
    assert_one_line_error(result, 2, "--web-port", "1 to 65535")


def test_the_embedded_broker_with_a_missing_binary() -> None:
    result = shopscore("broker", "--port", "1", env={"SHOPSCORE_BROKER_BIN": "/nonexistent"})
    assert_one_line_error(result, 2, "SHOPSCORE_BROKER_BIN")


def test_min_ts_takes_a_date(tmp_path: Path) -> None:
    # docs/configuration.md writes the default as a date; the variable takes that form.
    result = shopscore(
        "generate", "--users", "2", "--days", "1", "--out", str(tmp_path / "x.jsonl"),
        env={"SHOPSCORE_MIN_TS": "1990-01-01"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_unknown_command_and_missing_option_are_one_line() -> None:
    assert_one_line_error(shopscore("nosuch"), 2, "nosuch", "shopscore --help")
    assert_one_line_error(shopscore("generate"), 2, "--out", "shopscore generate --help")


def test_worker_whose_http_port_is_taken(broker: EmbeddedBroker, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = shopscore(
            "--broker", broker.url, "--web-port", str(port), "--data-dir", str(tmp_path),
            "--app-id", f"cli-port-{os.getpid()}", "--topic-prefix", f"cliport{os.getpid()}.",
            "worker",
        )  # fmt: skip
    assert_one_line_error(result, 2, f"127.0.0.1:{port}", "SHOPSCORE_WEB_PORT")


@pytest.mark.broker
def test_a_session_timeout_apache_kafka_refuses_is_one_line(kafka, tmp_path: Path) -> None:
    """Kafka refuses a consumer session under group.min.session.timeout.ms (6 s) with a fatal
    join error, after which Faust would wait forever, never ready: the worker asks first."""
    settings = worker_settings(kafka.url, tmp_path, "session-check", session_timeout_ms=4_000)
    result = shopscore("worker", env=settings.env())
    assert_one_line_error(
        result, 2, "SHOPSCORE_SESSION_TIMEOUT=4s", "group.min.session.timeout.ms=6000", "10s"
    )


@pytest.mark.broker
def test_an_input_topic_with_another_partition_count_is_one_line(broker, tmp_path: Path) -> None:
    """A topic created by a producer's first send gets the broker's default partition count:
    the worker says so rather than scatter a user's events and state over partitions."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    settings = worker_settings(broker.url, tmp_path, "partition-check", partitions=4)

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers())
        await admin.start()
        try:
            await admin.create_topics([NewTopic(settings.topic("carts"), 2, 1)])
        finally:
            await admin.close()

    asyncio.run(create())
    result = shopscore("worker", env=settings.env())
    assert_one_line_error(result, 2, "carts", "has 2 partitions", "SHOPSCORE_PARTITIONS=4")


@pytest.mark.broker
def test_exactly_once_on_the_embedded_broker_is_one_line(broker, tmp_path: Path) -> None:
    """The embedded broker has no transactions: the worker says so before it starts."""
    settings = worker_settings(
        broker.url, tmp_path, "eos-check", processing_guarantee="exactly_once"
    )
    result = shopscore("worker", env=settings.env())
    assert_one_line_error(
        result, 2, "SHOPSCORE_PROCESSING_GUARANTEE=exactly_once", "transactions", "at_least_once"
    )


def test_an_unknown_processing_guarantee_is_one_line() -> None:
    env = {"SHOPSCORE_BROKER": NOWHERE, "SHOPSCORE_PROCESSING_GUARANTEE": "twice"}
    result = shopscore("worker", env=env)
    assert_one_line_error(result, 2, "SHOPSCORE_PROCESSING_GUARANTEE", "exactly_once")
