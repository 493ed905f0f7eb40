"""Values too large for one Kafka record, stored in a table as compressed chunks.

A partition's online learners (the item co-occurrence model above all) grow with the catalogue:
in a replay of 20,000 users their pickle passed the producer's 1 MB request limit and the worker
crashed on every checkpoint after. Brokers cap records too (``message.max.bytes``), so raising
limits would only move the cliff. The value is compressed and split into chunks under keys of
their own; a small header under the value's key names the generation and chunk count, and is
written last, so a reader never sees a half-written generation: until the new header lands it
reads the previous, complete one.

Anyone who can write to the broker can write these records, so reading is strict and bounded:
a malformed header, a missing or oversized chunk, a compressed stream that is not exactly one
complete zlib stream, or one that inflates past ``MAX_VALUE_BYTES`` (a zip bomb) raises
``CorruptState``, never anything else.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable

from stream.errors import CorruptState

__all__ = [
    "CHUNK_BYTES",
    "MAX_CHUNKS",
    "MAX_CHUNK_RECORD",
    "MAX_GENERATION",
    "MAX_VALUE_BYTES",
    "chunk_key",
    "header",
    "join",
    "split",
]

#: Well under Kafka's default 1 MB record limit, with room for the key and headers.
CHUNK_BYTES = 256 * 1024
#: The most chunks a header may name (4096 chunks of 256 KiB: 1 GiB compressed).
MAX_CHUNKS = 4096
#: The largest chunk record read back (written ones are at most ``CHUNK_BYTES``; a record
#: cannot be much over Kafka's 1 MB limit anyway).
MAX_CHUNK_RECORD = 4 * CHUNK_BYTES
#: The largest value ``join`` inflates to; anything larger is refused, not allocated.
MAX_VALUE_BYTES = 256 * 2**20
#: The largest generation a header may name (12 digits: what the learners changelog's key
#: check accepts); a writer starts again at 1 past it.
MAX_GENERATION = 10**12 - 1
_MAGIC = b"SSCHUNK1"
# "SSCHUNK1 <generation> <count>": plain decimal digits, no sign, no leading/trailing space.
_HEADER = re.compile(rb"SSCHUNK1 ([0-9]{1,12}) ([0-9]{1,4})")


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
    if len(value) > MAX_VALUE_BYTES:
        raise ValueError(f"a value of {len(value)} bytes is over {MAX_VALUE_BYTES}")
    if not 0 <= generation <= MAX_GENERATION:
        raise ValueError(f"generation {generation} is not in [0, {MAX_GENERATION}]")
    packed = zlib.compress(value, 1)
    chunks = [packed[i : i + CHUNK_BYTES] for i in range(0, len(packed), CHUNK_BYTES)] or [b""]
    records = [(chunk_key(key, generation, i), chunk) for i, chunk in enumerate(chunks)]
    header = b"%s %d %d" % (_MAGIC, generation, len(chunks))
    return [*records, (key, header)]


def header(stored: bytes | None) -> tuple[int, int] | None:
    """(generation, chunk count) when ``stored`` is a chunk header, else None (no value, or a
    value written before chunking). A value that starts like a header but is not a well-formed
    one raises ``CorruptState``.

    >>> header(b"SSCHUNK1 3 2"), header(None), header(b"\\x80\\x05...")
    ((3, 2), None, None)
    >>> header(b"SSCHUNK1 3 -2")
    Traceback (most recent call last):
    ...
    stream.errors.CorruptState: chunk header: malformed: b'SSCHUNK1 3 -2'
    """
    if stored is None:
        return None
    if not isinstance(stored, bytes | bytearray):
        raise CorruptState("chunk header", f"not bytes ({type(stored).__name__})")
    if not stored.startswith(_MAGIC):
        return None
    match = _HEADER.fullmatch(stored)
    if match is None:
        raise CorruptState("chunk header", f"malformed: {bytes(stored[:60])!r}")
    generation, count = int(match.group(1)), int(match.group(2))
    if not 1 <= count <= MAX_CHUNKS:
        raise CorruptState("chunk header", f"{count} chunks (1 to {MAX_CHUNKS} allowed)")
    return generation, count


def join(get: Callable[[bytes], bytes | None], key: bytes) -> bytes | None:
    """The value stored under ``key``: joined from its chunks, or the stored bytes themselves
    when they are not a chunk header (values written before chunking). Raises ``CorruptState``
    for a malformed header, a missing or oversized chunk, or a compressed stream that is not
    one complete zlib stream inflating to at most ``MAX_VALUE_BYTES``."""
    stored = get(key)
    parsed = header(stored)
    if parsed is None:
        return stored
    generation, count = parsed
    inflate = zlib.decompressobj()
    out: list[bytes] = []
    size = 0
    for index in range(count):
        chunk = get(chunk_key(key, generation, index))
        where = f"chunk {index} of {count} of {key!r} (generation {generation})"
        if chunk is None:
            raise CorruptState("chunked value", f"{where} is missing")
        if not isinstance(chunk, bytes | bytearray):
            raise CorruptState("chunked value", f"{where} is not bytes")
        if len(chunk) > MAX_CHUNK_RECORD:
            raise CorruptState("chunked value", f"{where} has {len(chunk)} bytes")
        if inflate.eof:
            raise CorruptState("chunked value", f"{where} follows the end of the zlib stream")
        try:
            part = inflate.decompress(chunk, MAX_VALUE_BYTES - size + 1)
        except zlib.error as exc:
            raise CorruptState("chunked value", f"{where} does not inflate: {exc}") from None
        size += len(part)
        if size > MAX_VALUE_BYTES or inflate.unconsumed_tail:
            raise CorruptState("chunked value", f"{key!r} inflates past {MAX_VALUE_BYTES} bytes")
        out.append(part)
    if not inflate.eof:
        raise CorruptState("chunked value", f"the zlib stream of {key!r} is truncated")
    if inflate.unused_data:
        raise CorruptState("chunked value", f"{key!r} has bytes after its zlib stream")
    return b"".join(out)
