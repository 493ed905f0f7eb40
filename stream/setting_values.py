"""What each ``SHOPSCORE_*`` variable accepts: the parsers ``stream.settings`` applies to the
environment and the CLI's flags. Each returns the value or raises ``ValueError`` with the form
it accepts (``Settings.from_env`` names the variable)."""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

__all__ = [
    "EVENT_LOOPS",
    "PROCESSING_GUARANTEES",
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "parse_duration_ms",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


def parse_duration_ms(text: str | float | int) -> int:
    """Parse ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"7d"`` or plain seconds into milliseconds.

    >>> parse_duration_ms("1h"), parse_duration_ms("90"), parse_duration_ms("250ms")
    (3600000, 90000, 250)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(float(text) * 1000)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 250ms, 30s, 5m, 1h, 7d)")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


def _positive_int(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError("must be a whole number of 1 or more, e.g. 4") from None
    if value <= 0:
        raise ValueError("must be a whole number of 1 or more, e.g. 4")
    return value


def _horizons(text: str) -> tuple[int, ...]:
    """``"30d,90d,180d"``: distinct positive durations, at most 8, in increasing order."""
    try:
        values = [parse_duration_ms(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not 1 <= len(values) <= 8 or min(values) <= 0 or len(set(values)) != len(values):
        raise ValueError("must be 1 to 8 distinct durations separated by commas, e.g. 30d,90d,180d")
    return tuple(sorted(values))


def _positive_duration_ms(text: str) -> int:
    value = parse_duration_ms(text)
    if value <= 0:
        raise ValueError("must be a positive duration, e.g. 365d")
    return value


def _port(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port, 1 to 65535")
    return value


def _timestamp_ms(text: str) -> int:
    """Epoch milliseconds, or an ISO-8601 date or time (UTC unless it says otherwise)."""
    text = text.strip()
    if text.lstrip("-").isascii() and text.lstrip("-").isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be an ISO-8601 date such as 1990-01-01, or epoch ms") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return round(parsed.timestamp() * 1000)


def _executable(text: str) -> Path | None:
    if not text.strip():
        return None
    if not (os.path.isfile(text) and os.access(text, os.X_OK)):
        raise ValueError("is not an executable file (a Tansu broker binary)")
    return Path(text)


def _store(text: str) -> str:
    # Faust's "rocksdb://" store runs on the rocksdict package when python-rocksdb is absent.
    aliases = {"memory": "memory://", "rocksdb": "rocksdb://", "rocksdict": "rocksdb://"}
    value = aliases.get(text, text)
    value = "rocksdb://" if value == "rocksdict://" else value
    if value not in ("memory://", "rocksdb://"):
        raise ValueError("must be memory:// or rocksdb:// (RocksDB through rocksdict)")
    return value


def _broker(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    urls = [u.strip() for u in text.split(";") if u.strip()]
    for url in urls:
        if not re.match(r"^(kafka|aiokafka)://[^/:]+:\d+$", url) and not re.match(
            r"^[^/:]+:\d+$", url
        ):
            raise ValueError("must look like kafka://host:port (several separated by ';')")
    return ";".join(u if "://" in u else f"kafka://{u}" for u in urls)


def _level(text: str) -> str:
    value = text.lower()
    if value not in ("debug", "info", "warn", "warning", "error", "crit"):
        raise ValueError("must be one of debug, info, warning, error")
    return "warn" if value == "warning" else value


EVENT_LOOPS = ("uvloop", "asyncio")


def _event_loop(text: str) -> str:
    value = text.strip().lower()
    if value not in EVENT_LOOPS:
        raise ValueError(f"must be one of {', '.join(EVENT_LOOPS)}")
    return value


PROCESSING_GUARANTEES = ("at_least_once", "exactly_once")


def _guarantee(text: str) -> str:
    value = text.strip().lower().replace("-", "_")
    if value not in PROCESSING_GUARANTEES:
        raise ValueError(f"must be one of {', '.join(PROCESSING_GUARANTEES)}")
    return value


#: Kafka client security, as Kafka's own ``security.protocol`` / ``sasl.mechanism`` name them.
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _security_protocol(text: str) -> str:
    value = text.strip().upper()
    if value not in SECURITY_PROTOCOLS:
        raise ValueError(f"must be one of {', '.join(SECURITY_PROTOCOLS)}")
    return value


def _sasl_mechanism(text: str) -> str:
    value = text.strip().upper()
    if value not in SASL_MECHANISMS:
        raise ValueError(f"must be one of {', '.join(SASL_MECHANISMS)}")
    return value


def _optional_path(text: str) -> Path | None:
    return Path(text) if text.strip() else None


def _optional_str(text: str) -> str | None:
    return text if text.strip() else None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a non-negative number") from None
    if value != value or value < 0:
        raise ValueError("must be a non-negative number")
    return value
