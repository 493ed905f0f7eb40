"""Settings come from SHOPSCORE_* once; flags override; bad values fail fast and say why."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.errors import ConfigError
from stream.settings import Limits, Settings, parse_duration_ms


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.broker is None and settings.store == "memory://" and settings.partitions == 4


def test_environment_then_overrides() -> None:
    env = {
        "SHOPSCORE_BROKER": "kafka://10.0.0.1:9092",
        "SHOPSCORE_PARTITIONS": "8",
        "SHOPSCORE_STORE": "rocksdb",
        "SHOPSCORE_WEB_PORT": "7000",
        "SHOPSCORE_DATA_DIR": "/var/lib/shopscore",
        "SHOPSCORE_MAX_PRICE": "50",
        "SHOPSCORE_REBALANCE_TIMEOUT": "5s",
    }
    settings = Settings.from_env(env, partitions=2, web_port=None)
    assert settings.broker == "kafka://10.0.0.1:9092"
    assert settings.partitions == 2  # the flag wins
    assert settings.web_port == 7000  # a flag that was not given leaves the variable alone
    assert settings.store == "rocksdb://"
    assert settings.data_dir == Path("/var/lib/shopscore")
    assert settings.limits == Limits(max_price=50.0)
    assert settings.rebalance_timeout_ms == 5000


def test_bare_host_port_and_several_brokers() -> None:
    settings = Settings.from_env({"SHOPSCORE_BROKER": "k1:9092;kafka://k2:9093"})
    assert settings.broker == "kafka://k1:9092;kafka://k2:9093"
    assert settings.bootstrap_servers() == "k1:9092,k2:9093"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SHOPSCORE_PARTITIONS", "zero"),
        ("SHOPSCORE_PARTITIONS", "0"),
        ("SHOPSCORE_STORE", "redis://"),
        ("SHOPSCORE_BROKER", "http://x"),
        ("SHOPSCORE_REBALANCE_TIMEOUT", "soon"),
        ("SHOPSCORE_MAX_PRICE", "-1"),
        ("SHOPSCORE_LOG_LEVEL", "loud"),
    ],
)
def test_malformed_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_no_broker_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match="SHOPSCORE_BROKER"):
        Settings.from_env({}).bootstrap_servers()


def test_env_round_trip_for_child_processes() -> None:
    settings = Settings.from_env(
        {
            "SHOPSCORE_BROKER": "kafka://h:1",
            "SHOPSCORE_MAX_FUTURE": "2h",
            "SHOPSCORE_BATCH_WITHIN": "20ms",
        }
    )
    assert Settings.from_env(settings.env()) == settings


def test_durations() -> None:
    assert [parse_duration_ms(t) for t in ("1d", "7d", "2m", "1.5s", "10")] == [
        86_400_000,
        604_800_000,
        120_000,
        1500,
        10_000,
    ]
