"""The pure murmur2 gives the partitions Kafka's clients give (aiokafka's is the reference)."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from stream.contract.partitioning import murmur2, owner_partition


@given(st.binary(max_size=300))
def test_murmur2_matches_the_kafka_client(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@given(st.text(max_size=100), st.integers(1, 64))
def test_the_owner_partition_is_the_java_default_partitioners(
    user_id: str, partitions: int
) -> None:
    key = user_id.encode("utf-8", "surrogatepass")
    assert owner_partition(user_id, partitions) == (aiokafka_murmur2(key) & 0x7FFFFFFF) % partitions
