"""Values too large for one Kafka record, stored in a table as compressed chunks.

A partition's online learners (the item co-occurrence model above all) grow with the catalogue:
in a replay of 20,000 users their pickle passed the producer's 1 MB request limit and the worker
crashed on every checkpoint after. Brokers cap records too (``message.max.bytes``), so raising
limits would only move the cliff. The value is compressed and split into chunks under keys of
their own; a small header under the value's key names the generation and chunk count, and is
written last, so a reader never sees a half-written generation: until the new header lands it
reads the previous, complete one.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

__all__ = ["CHUNK_BYTES", "chunk_key", "join", "split"]

#: Well under Kafka's default 1 MB record limit, with room for the key and headers.
CHUNK_BYTES = 256 * 1024
_MAGIC = b"SSCHUNK1"


def chunk_key(key: bytes, generation: int, index: int) -> bytes:
    return b"%s#%d#%d" % (key, generation, index)


def split(key: bytes, value: bytes, generation: int) -> list[tuple[bytes, bytes]]:
    """The records that store ``value`` under ``key``: the chunks, then the header (last).

    >>> records = split(b"3", b"x" * 10, generation=7)
    >>> [k for k, _ in records]
    [b'3#7#0', b'3']
    >>> join(dict(records).get, b"3")
    b'xxxxxxxxxx'
    """
    packed = zlib.compress(value, 1)
    chunks = [packed[i : i + CHUNK_BYTES] for i in range(0, len(packed), CHUNK_BYTES)] or [b""]
    records = [(chunk_key(key, generation, i), chunk) for i, chunk in enumerate(chunks)]
    header = b"%s %d %d" % (_MAGIC, generation, len(chunks))
    return [*records, (key, header)]


def header(stored: bytes | None) -> tuple[int, int] | None:
    """(generation, chunk count) when ``stored`` is a chunk header, else None."""
    if stored is None or not stored.startswith(_MAGIC):
        return None
    _magic, generation, count = stored.split(b" ")
    return int(generation), int(count)


def join(get: Callable[[bytes], bytes | None], key: bytes) -> bytes | None:
    """The value stored under ``key``: joined from its chunks, or the stored bytes themselves
    when they are not a chunk header (values written before chunking)."""
    stored = get(key)
    parsed = header(stored)
    if parsed is None:
        return stored
    generation, count = parsed
    parts = []
    for index in range(count):
        chunk = get(chunk_key(key, generation, index))
        if chunk is None:
            raise ValueError(
                f"chunk {index} of {count} of {key!r} (generation {generation}) is missing"
            )
        parts.append(chunk)
    return zlib.decompress(b"".join(parts))
