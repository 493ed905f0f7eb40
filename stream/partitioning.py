"""Which partition owns a user: Kafka's default (Java) partitioner, murmur2 of the user_id.

A user's events, state and scores live on one partition: the one the Java client's default
partitioner (and aiokafka's, and librdkafka's ``murmur2_random``) picks for the key
``user_id``. An event that arrives elsewhere (placed by another partitioner, such as
librdkafka's default CRC32 one, or sent with an explicit partition) is re-published by the
worker to this partition (``stream.ingest.clean_message``), whatever its key.

>>> owner_partition("u000001", 4) == owner_partition("u000001", 4)
True
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2

__all__ = ["owner_partition"]


@lru_cache(maxsize=1 << 16)
def _hash(user_id: str) -> int:
    # murmur2 is pure Python in aiokafka (about 1 µs for a short id, 30 µs for 256 characters)
    # and asked for every event and, after each assignment, for every stored user.
    return murmur2(user_id.encode("utf-8", "surrogatepass")) & 0x7FFFFFFF


def owner_partition(user_id: str, partitions: int) -> int:
    """The partition of ``partitions`` that owns ``user_id`` (Java's default partitioner)."""
    return _hash(user_id) % partitions
