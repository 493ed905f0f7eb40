"""The dead-letter record: what was refused, where it came from and why, in a replayable form."""

from __future__ import annotations

import base64
from typing import Any

__all__ = ["dlq_record"]


def dlq_record(
    *,
    raw: bytes | None,
    source_topic: str,
    reason: str,
    detail: str,
    partition: int | None = None,
    offset: int | None = None,
    rejected_at_ms: int | None = None,
) -> dict[str, Any]:
    """The ``events.dlq`` value for a rejected payload.

    ``raw`` is kept verbatim as text when it is UTF-8, else base64 (``raw_encoding`` says which),
    so an operator can fix and re-publish it without loss.

    >>> dlq_record(raw=b"{", source_topic="clicks", reason="not_json", detail="eof")["raw"]
    '{'
    >>> dlq_record(raw=b"\\xff", source_topic="clicks", reason="not_json", detail="")["raw_encoding"]
    'base64'
    """
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
    }
