"""SASL/TLS settings: parsed from SHOPSCORE_* once, passed to aiokafka clients and to Faust."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from stream.errors import ConfigError
from stream.kafka.options import broker_credentials as _broker_credentials
from stream.settings import Settings


@pytest.fixture
def pem(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key (PEM), standing in for a CA and a client cert."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=shopscore-test", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    settings = Settings.from_env({"SHOPSCORE_BROKER": "kafka://k:9092"})
    assert settings.security_protocol == "PLAINTEXT"
    assert settings.kafka_client_options() == {}
    assert settings.ssl_context() is None
    assert _broker_credentials(settings) is None


def test_sasl_ssl_from_the_environment(pem: tuple[Path, Path]) -> None:
    cert, _key = pem
    settings = Settings.from_env(
        {
            "SHOPSCORE_BROKER": "kafka://broker.example:9093",
            "SHOPSCORE_BROKER_SECURITY_PROTOCOL": "sasl_ssl",
            "SHOPSCORE_SASL_MECHANISM": "scram-sha-512",
            "SHOPSCORE_SASL_USERNAME": "shopscore",
            "SHOPSCORE_SASL_PASSWORD": "s3cret",
            "SHOPSCORE_SSL_CAFILE": str(cert),
        }
    )
    assert settings.security_protocol == "SASL_SSL"
    assert settings.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.ssl_cafile == cert
    assert "s3cret" not in repr(settings)  # the password never lands in a log line
    options = settings.kafka_client_options()
    context = options.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "shopscore",
        "sasl_plain_password": "s3cret",
    }
    # Faust's clients (consumer, producer, admin) get the same settings through its credentials.
    faust_auth = credentials_to_aiokafka_auth(_broker_credentials(settings))
    assert isinstance(faust_auth.pop("ssl_context"), ssl.SSLContext)
    assert faust_auth == options
    # A child process (the worker of `shopscore run`) gets them through its environment.
    assert Settings.from_env(settings.env()) == settings


def test_mutual_tls(pem: tuple[Path, Path]) -> None:
    cert, key = pem
    settings = Settings.from_env(
        {
            "SHOPSCORE_BROKER_SECURITY_PROTOCOL": "SSL",
            "SHOPSCORE_SSL_CAFILE": str(cert),
            "SHOPSCORE_SSL_CERTFILE": str(cert),
            "SHOPSCORE_SSL_KEYFILE": str(key),
        }
    )
    options = settings.kafka_client_options()
    assert options["security_protocol"] == "SSL" and "sasl_mechanism" not in options
    faust_auth = credentials_to_aiokafka_auth(_broker_credentials(settings))
    assert faust_auth["security_protocol"] == "SSL"
    assert isinstance(faust_auth["ssl_context"], ssl.SSLContext)


def test_sasl_plaintext_without_tls() -> None:
    settings = Settings.from_env(
        {
            "SHOPSCORE_BROKER_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "SHOPSCORE_SASL_USERNAME": "u",
            "SHOPSCORE_SASL_PASSWORD": "p",
        }
    )
    assert "ssl_context" not in settings.kafka_client_options()
    assert credentials_to_aiokafka_auth(_broker_credentials(settings))["ssl_context"] is None


def test_empty_values_mean_unset() -> None:
    # docker-compose passes `${SHOPSCORE_SASL_USERNAME:-}` through as an empty string.
    settings = Settings.from_env(
        {"SHOPSCORE_SASL_USERNAME": "", "SHOPSCORE_SASL_PASSWORD": "", "SHOPSCORE_SSL_CAFILE": ""}
    )
    assert settings.sasl_username is None and settings.ssl_cafile is None


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"SHOPSCORE_BROKER_SECURITY_PROTOCOL": "TLS"}, "SHOPSCORE_BROKER_SECURITY_PROTOCOL"),
        ({"SHOPSCORE_SASL_MECHANISM": "KERBEROS"}, "SHOPSCORE_SASL_MECHANISM"),
        ({"SHOPSCORE_BROKER_SECURITY_PROTOCOL": "SASL_SSL"}, "SHOPSCORE_SASL_USERNAME"),
        ({"SHOPSCORE_SSL_KEYFILE": "/k.pem"}, "SHOPSCORE_SSL_CERTFILE"),
        ({"SHOPSCORE_REPLICATION_FACTOR": "0"}, "SHOPSCORE_REPLICATION_FACTOR"),
    ],
)
def test_malformed_security_settings_name_the_variable(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Settings.from_env(env)


def test_unreadable_tls_file_is_a_configuration_error(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "SHOPSCORE_BROKER_SECURITY_PROTOCOL": "SSL",
            "SHOPSCORE_SSL_CAFILE": str(tmp_path / "missing.pem"),
        }
    )
    with pytest.raises(ConfigError, match="SHOPSCORE_SSL_CAFILE"):
        settings.kafka_client_options()


def test_advertised_web_host() -> None:
    assert Settings(web_host="127.0.0.1").advertised_web_host() == "127.0.0.1"
    assert Settings(web_host="0.0.0.0").advertised_web_host() not in ("0.0.0.0", "")
    explicit = Settings.from_env(
        {"SHOPSCORE_WEB_HOST": "0.0.0.0", "SHOPSCORE_WEB_ADVERTISED_HOST": "worker-1.internal"}
    )
    assert explicit.advertised_web_host() == "worker-1.internal"


def test_env_names_lists_every_variable_read() -> None:
    names = Settings.env_names()
    assert {
        "SHOPSCORE_BROKER",
        "SHOPSCORE_PARTITIONS",
        "SHOPSCORE_BROKER_SECURITY_PROTOCOL",
        "SHOPSCORE_SASL_PASSWORD",
        "SHOPSCORE_SSL_CAFILE",
        "SHOPSCORE_MAX_PRICE",
    } <= names
    assert set(Settings().env()) <= names
