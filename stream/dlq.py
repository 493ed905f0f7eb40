"""The dead-letter record: what was refused, where it came from and why, in a replayable form."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

__all__ = ["MAX_RAW_BYTES", "dlq_record"]

#: The most of a payload a dead-letter record embeds. JSON escaping can grow text sixfold
#: (``\u001f`` for one byte), so 128 KiB keeps every record well under the producer's 1 MB
#: request limit; a larger payload (only ``too_large`` ones, unless ``MAX_PAYLOAD_BYTES`` was
#: raised) would otherwise make the record unsendable and crash the worker on it, again and
#: again after each restart.
MAX_RAW_BYTES = 128 * 1024


def dlq_record(
    *,
    raw: bytes | None,
    source_topic: str,
    reason: str,
    detail: str,
    partition: int | None = None,
    offset: int | None = None,
    rejected_at_ms: int | None = None,
    max_raw_bytes: int = MAX_RAW_BYTES,
) -> dict[str, Any]:
    """The ``events.dlq`` value for a rejected payload.

    ``raw`` is kept verbatim as text when it is UTF-8, else base64 (``raw_encoding`` says which),
    so an operator can fix and re-publish it without loss. A payload over ``max_raw_bytes`` is
    cut there (``raw_truncated``), with its full size and sha256; the whole payload stays at
    ``source_topic``/``partition``/``offset``.

    >>> dlq_record(raw=b"{", source_topic="clicks", reason="not_json", detail="eof")["raw"]
    '{'
    >>> dlq_record(raw=b"\\xff", source_topic="clicks", reason="not_json", detail="")["raw_encoding"]
    'base64'
    >>> cut = dlq_record(raw=b"abcdef", source_topic="clicks", reason="too_large", detail="",
    ...                  max_raw_bytes=4)
    >>> cut["raw"], cut["raw_truncated"], cut["raw_bytes"]
    ('abcd', True, 6)
    """
    extra: dict[str, Any] = {}
    if raw is not None and len(raw) > max_raw_bytes:
        extra = {
            "raw_truncated": True,
            "raw_bytes": len(raw),
            "raw_sha256": hashlib.sha256(raw).hexdigest(),
        }
        raw = raw[:max_raw_bytes]
    if raw is None:
        text, encoding = None, "none"
    else:
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return {
        "reason": reason,
        "detail": detail,
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "raw": text,
        "raw_encoding": encoding,
        "rejected_at": rejected_at_ms,
        **extra,
    }
