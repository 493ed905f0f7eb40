"""``faust_app_options``: the one source of the worker's and the bench baselines' Faust options."""

from __future__ import annotations

from pathlib import Path

import faust

from stream.kafka.options import broker_credentials, faust_app_options
from stream.settings import Settings


def test_options_derive_from_settings(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "SHOPSCORE_BROKER": "kafka://k:9092",
            "SHOPSCORE_APP_ID": "opts",
            "SHOPSCORE_PARTITIONS": "7",
            "SHOPSCORE_REPLICATION_FACTOR": "2",
            "SHOPSCORE_REBALANCE_TIMEOUT": "6s",
            "SHOPSCORE_SESSION_TIMEOUT": "1500ms",
            "SHOPSCORE_WEB_HOST": "0.0.0.0",
            "SHOPSCORE_WEB_ADVERTISED_HOST": "worker-1",
            "SHOPSCORE_WEB_PORT": "6123",
            "SHOPSCORE_STORE": "rocksdb://",
            "SHOPSCORE_DATA_DIR": str(tmp_path),
        }
    )
    options = faust_app_options(settings)
    assert options["broker"] == "kafka://k:9092"
    assert options["store"] == "rocksdb://"
    assert options["datadir"] == str(tmp_path)
    assert (options["web_bind"], options["web_host"], options["web_port"]) == (
        "0.0.0.0",
        "worker-1",
        6123,
    )
    assert (options["topic_partitions"], options["topic_replication_factor"]) == (7, 2)
    assert options["broker_rebalance_timeout"] == 6.0
    assert options["broker_session_timeout"] == 1.5
    assert options["broker_heartbeat_interval"] == 0.5  # a third of the session timeout
    assert options["key_serializer"] == options["value_serializer"] == "raw"


def test_overrides_win_and_faust_accepts_every_option(tmp_path: Path) -> None:
    settings = Settings(broker="kafka://k:9092", store="rocksdb://", data_dir=tmp_path)
    options = faust_app_options(settings, store="memory://", producer_linger=0.0)
    assert options["store"] == "memory://"
    assert options["producer_linger"] == 0.0
    assert faust_app_options(settings)["producer_linger"] == 0.005
    app = faust.App("opts-test", **options)  # builds the app only: no broker is contacted
    assert str(app.conf.store) == "memory:"
    assert app.conf.broker_session_timeout == settings.session_timeout_ms / 1000
    assert app.conf.producer_max_batch_size == 512 * 1024
    assert app.conf.stream_wait_empty is False


def test_plaintext_has_no_credentials() -> None:
    settings = Settings.from_env({"SHOPSCORE_BROKER": "kafka://k:9092"})
    assert broker_credentials(settings) is None
    assert faust_app_options(settings)["broker_credentials"] is None


def test_sasl_settings_become_faust_credentials() -> None:
    settings = Settings(
        broker="kafka://k:9092",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="pw",
    )
    credentials = broker_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("svc", "pw")
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.ssl_context is None
