"""The dead-letter record: what was refused, where it came from and why, in a replayable form.

Anyone who can write to the broker chooses a rejected message's key and value, so everything a
dead-letter message holds is bounded: a DLQ message that the producer refuses (over its
``max_request_size``, 1,000,000 bytes in Faust) would crash the worker on it, again after every
restart. ``dlq_message`` builds the bytes actually sent, and guarantees their size.

Bounds (docs/contracts.md, "Dead-letter records"):

* the Kafka key of the DLQ message: the rejected message's key cut at ``MAX_KEY_BYTES``;
* ``raw``: the payload cut at ``MAX_RAW_BYTES``; ``key``: the key as above;
* ``detail`` and any other text: ``MAX_TEXT_CHARS`` characters;
* a payload or key is kept as UTF-8 text unless it is not UTF-8, or JSON escaping would make it
  more than twice its size (control characters grow sixfold, ``\\u001f``): then base64;
* so key + value stay under ``MAX_DLQ_MESSAGE_BYTES`` (300,000 bytes), whatever the input.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "MAX_DLQ_MESSAGE_BYTES",
    "MAX_KEY_BYTES",
    "MAX_RAW_BYTES",
    "MAX_TEXT_CHARS",
    "bound_key",
    "dlq_message",
    "dlq_record",
]

#: The most of a payload a dead-letter record embeds (a larger one is cut, with its full size
#: and sha256; the whole payload stays at ``source_topic``/``partition``/``offset``).
MAX_RAW_BYTES = 128 * 1024

#: The most of a Kafka key a dead-letter message keeps, as its own key and in ``key``.
MAX_KEY_BYTES = 1024

#: The most characters of ``detail`` (and of any other text field) a record keeps.
MAX_TEXT_CHARS = 1000

#: What key + value of a DLQ message never exceed: the payload's 128 KiB at most doubled by
#: JSON escaping (else base64, 4/3), the key's 1 KiB likewise twice (in the record and as the
#: message key), short fields. Well under the producer's 1,000,000-byte request limit.
MAX_DLQ_MESSAGE_BYTES = 300_000

#: Escaping growth beyond which text is embedded as base64 instead (quotes double; normal JSON
#: payloads stay text).
_MAX_ESCAPE_GROWTH = 2


def bound_key(key: bytes | None) -> bytes | None:
    """The key a DLQ message is sent with: the rejected message's key, cut at ``MAX_KEY_BYTES``.

    >>> bound_key(b"u1"), len(bound_key(b"k" * 5000))
    (b'u1', 1024)
    """
    if key is None:
        return None
    return bytes(key[:MAX_KEY_BYTES])


def dlq_record(
    *,
    raw: bytes | None,
    source_topic: str,
    reason: str,
    detail: str,
    partition: int | None = None,
    offset: int | None = None,
    rejected_at_ms: int | None = None,
    key: bytes | None = None,
    max_raw_bytes: int = MAX_RAW_BYTES,
) -> dict[str, Any]:
    """The ``events.dlq`` value for a rejected payload.

    ``raw`` is kept verbatim as text when it is UTF-8, else base64 (``raw_encoding`` says which),
    so an operator can fix and re-publish it without loss. A payload over ``max_raw_bytes`` is
    cut there (``raw_truncated``), with its full size and sha256; the whole payload stays at
    ``source_topic``/``partition``/``offset``. The message's Kafka ``key`` is recorded the same
    way (``key``, ``key_encoding``; over ``MAX_KEY_BYTES``: ``key_truncated``, ``key_bytes``,
    ``key_sha256``). ``detail`` is cut at ``MAX_TEXT_CHARS``.

    >>> dlq_record(raw=b"{", source_topic="clicks", reason="not_json", detail="eof")["raw"]
    '{'
    >>> dlq_record(raw=b"\\xff", source_topic="clicks", reason="not_json", detail="")["raw_encoding"]
    'base64'
    >>> cut = dlq_record(raw=b"abcdef", source_topic="clicks", reason="too_large", detail="",
    ...                  max_raw_bytes=4)
    >>> cut["raw"], cut["raw_truncated"], cut["raw_bytes"]
    ('abcd', True, 6)
    >>> big = dlq_record(raw=b"x", source_topic="clicks", reason="not_json", detail="",
    ...                  key=b"k" * 2000)
    >>> len(big["key"]), big["key_truncated"], big["key_bytes"]
    (1024, True, 2000)
    """
    raw_text, raw_encoding, raw_extra = _embed("raw", raw, max_raw_bytes)
    key_text, key_encoding, key_extra = _embed("key", key, MAX_KEY_BYTES)
    return {
        "reason": reason,
        "detail": _cut_text(detail),
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "raw": raw_text,
        "raw_encoding": raw_encoding,
        "rejected_at": rejected_at_ms,
        **raw_extra,
        "key": key_text,
        "key_encoding": key_encoding,
        **key_extra,
    }


def dlq_message(key: bytes | None, record: Mapping[str, Any]) -> tuple[bytes | None, bytes]:
    """The (key, value) bytes of the DLQ message for ``record`` (a ``dlq_record``) rejected with
    Kafka key ``key``: ``len(key or b"") + len(value) <= MAX_DLQ_MESSAGE_BYTES``, always.

    The key is cut at ``MAX_KEY_BYTES``. A record that does not fit as it is (one not built by
    ``dlq_record``, or with fields added since) has its text fields cut, then its payload
    replaced by its size and sha256: the worker never builds a message it cannot send.

    >>> k, v = dlq_message(b"u" * 10**6, dlq_record(raw=b"\\x01" * 10**6, source_topic="clicks",
    ...                                             reason="too_large", detail=""))
    >>> len(k) + len(v) <= MAX_DLQ_MESSAGE_BYTES
    True
    """
    out_key = bound_key(key)
    budget = MAX_DLQ_MESSAGE_BYTES - len(out_key or b"")
    value = _dumps(record)
    if value is not None and len(value) <= budget:
        return out_key, value
    # Too large (or not JSON): every field bounded, the payload left out.
    fields: dict[str, Any] = {
        str(name)[:64]: _bounded(item) for name, item in list(record.items())[:64]
    }
    fields.update(raw=None, raw_encoding="none", raw_omitted=True)
    value = _dumps(fields)
    if value is not None and len(value) <= budget:
        return out_key, value
    # Last resort: what identifies the rejected message (it stays at source_topic/offset).
    minimal = {
        name: _bounded(record.get(name), 64)
        for name in ("reason", "source_topic", "partition", "offset", "rejected_at")
    }
    minimal.update(
        detail="record too large to keep", raw=None, raw_encoding="none", raw_omitted=True
    )
    return out_key, orjson.dumps(minimal)


def _embed(name: str, data: bytes | None, limit: int) -> tuple[str | None, str, dict[str, Any]]:
    """``data`` as (text, encoding, extra fields): cut at ``limit`` bytes (``<name>_truncated``,
    ``<name>_bytes``, ``<name>_sha256`` then), text when UTF-8 that escapes compactly, else
    base64."""
    if data is None:
        return None, "none", {}
    data = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    extra: dict[str, Any] = {}
    if len(data) > limit:
        extra = {
            f"{name}_truncated": True,
            f"{name}_bytes": len(data),
            f"{name}_sha256": hashlib.sha256(data).hexdigest(),
        }
        data = data[:limit]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        # orjson escapes only '"', '\\' and control characters; non-ASCII stays as UTF-8.
        if len(orjson.dumps(text)) <= _MAX_ESCAPE_GROWTH * len(data) + 2:
            return text, "utf-8", extra
    return base64.b64encode(data).decode("ascii"), "base64", extra


def _cut_text(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "…"


def _bounded(value: Any, chars: int = MAX_TEXT_CHARS) -> Any:
    """A JSON-safe, small version of a record field (text cut, containers by their type)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else None
    if not isinstance(value, str):
        value = type(value).__name__
    return value[:chars].encode("utf-8", "replace").decode("utf-8")


def _dumps(record: Mapping[str, Any]) -> bytes | None:
    try:
        return orjson.dumps(record)
    except (TypeError, ValueError):  # surrogates, huge ints, non-JSON types
        return None
