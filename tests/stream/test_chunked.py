"""Values larger than one Kafka record are stored as compressed chunks and read back whole."""

from __future__ import annotations

import os
import pickle

import pytest

from stream import chunked
from stream.scoring.state import Learners


def _store(records: list[tuple[bytes, bytes]], table: dict[bytes, bytes]) -> None:
    for key, value in records:
        table[key] = value


def test_a_value_of_several_chunks_is_read_back_whole() -> None:
    value = os.urandom(3 * chunked.CHUNK_BYTES)  # incompressible: at least 4 chunks
    records = chunked.split(b"2", value, generation=1)
    assert len(records) >= 4
    assert records[-1][0] == b"2"  # the header is written last
    assert all(len(v) <= chunked.CHUNK_BYTES for _k, v in records)
    table: dict[bytes, bytes] = {}
    _store(records, table)
    assert chunked.join(table.get, b"2") == value


def test_a_new_generation_is_read_only_once_its_header_lands() -> None:
    table: dict[bytes, bytes] = {}
    _store(chunked.split(b"0", b"old" * 1000, generation=1), table)
    *chunks, header = chunked.split(b"0", b"new" * 1000, generation=2)
    _store(chunks, table)  # a crash here, before the header
    assert chunked.join(table.get, b"0") == b"old" * 1000
    _store([header], table)
    assert chunked.join(table.get, b"0") == b"new" * 1000


def test_values_written_before_chunking_are_read_as_they_are() -> None:
    legacy = Learners(seed=1).to_bytes()
    assert chunked.join({b"1": legacy}.get, b"1") == legacy
    assert chunked.join({}.get, b"1") is None


def test_a_missing_chunk_is_an_error_not_a_silent_reset() -> None:
    table: dict[bytes, bytes] = {}
    _store(chunked.split(b"0", os.urandom(2 * chunked.CHUNK_BYTES), generation=3), table)
    del table[chunked.chunk_key(b"0", 3, 1)]
    with pytest.raises(ValueError, match="chunk 1"):
        chunked.join(table.get, b"0")


def test_learners_round_trip_through_chunks() -> None:
    learners = Learners(seed=4)
    table: dict[bytes, bytes] = {}
    _store(chunked.split(b"4", learners.to_bytes(), generation=1), table)
    blob = chunked.join(table.get, b"4")
    assert (
        blob == learners.to_bytes() or pickle.loads(blob)[0] == pickle.loads(learners.to_bytes())[0]
    )
    restored = Learners.from_bytes(blob)
    assert set(restored.__dict__) == set(learners.__dict__)
