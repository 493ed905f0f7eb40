"""Values larger than one Kafka record are stored as compressed chunks and read back whole;
anything else a broker writer can put under those keys raises ``CorruptState``, never another
exception, and never inflates past the bound."""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.errors import CorruptState
from stream.scoring import chunked
from stream.scoring.state import Learners

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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


def test_a_missing_chunk_is_corrupt_state_not_a_silent_reset() -> None:
    table: dict[bytes, bytes] = {}
    _store(chunked.split(b"0", os.urandom(2 * chunked.CHUNK_BYTES), generation=3), table)
    del table[chunked.chunk_key(b"0", 3, 1)]
    with pytest.raises(CorruptState, match="chunk 1"):
        chunked.join(table.get, b"0")


def test_learners_round_trip_through_chunks() -> None:
    learners = Learners(seed=4)
    blob = learners.to_bytes()
    table: dict[bytes, bytes] = {}
    _store(chunked.split(b"4", blob, generation=1), table)
    joined = chunked.join(table.get, b"4")
    assert joined == blob
    restored = Learners.from_bytes(joined)
    assert set(restored.__dict__) == set(learners.__dict__)
    again = restored.to_bytes()
    assert Learners.from_bytes(again).to_bytes() == again


@pytest.mark.parametrize(
    "header",
    [
        b"SSCHUNK1",
        b"SSCHUNK1 ",
        b"SSCHUNK1 1",
        b"SSCHUNK1 1 1 1",
        b"SSCHUNK1 x 1",
        b"SSCHUNK1 1 x",
        b"SSCHUNK1 -1 1",
        b"SSCHUNK1 1 -1",
        b"SSCHUNK1 1 0",  # a generation has at least one chunk
        b"SSCHUNK1 1 4097",  # more chunks than any value needs
        b"SSCHUNK1 1 99999999999999999999",
        b"SSCHUNK1 9999999999999 1",  # past MAX_GENERATION
        b"SSCHUNK1 +1 1",
        b"SSCHUNK1  1 1",
        b"SSCHUNK1 1 1\n",
        b"SSCHUNK1 \xd9\xa1 1",  # an Arabic-Indic digit: int() would take it
        b"SSCHUNK1 1_0 1",  # int() would take it too
    ],
)
def test_a_malformed_header_is_corrupt_state(header: bytes) -> None:
    with pytest.raises(CorruptState):
        chunked.header(header)
    with pytest.raises(CorruptState):
        chunked.join({b"0": header, b"0#1#0": zlib.compress(b"x")}.get, b"0")


def test_a_zip_bomb_is_refused_without_inflating_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert chunked.MAX_VALUE_BYTES == 256 * 2**20  # the bound; a smaller one keeps this test light
    monkeypatch.setattr(chunked, "MAX_VALUE_BYTES", 1 << 20)
    bomb = zlib.compress(b"\0" * (8 << 20), 9)  # 8 MiB of zeros in ~8 KB
    table = {b"0": b"SSCHUNK1 1 1", b"0#1#0": bomb}
    with pytest.raises(CorruptState, match="inflates past"):
        chunked.join(table.get, b"0")


@pytest.mark.parametrize(
    "chunks",
    [
        [b"not zlib at all"],
        [zlib.compress(b"value")[:-3]],  # truncated stream
        [zlib.compress(b"value") + b"trailing"],  # bytes after the stream
        [zlib.compress(b"value"), b"an extra chunk"],  # a chunk after the stream's end
        [b"\0" * (chunked.MAX_CHUNK_RECORD + 1)],  # a chunk no writer makes
    ],
)
def test_garbage_chunks_are_corrupt_state(chunks: list[bytes]) -> None:
    table = {chunked.chunk_key(b"0", 1, i): c for i, c in enumerate(chunks)}
    table[b"0"] = b"SSCHUNK1 1 %d" % len(chunks)
    with pytest.raises(CorruptState):
        chunked.join(table.get, b"0")


# -- fuzzing --------------------------------------------------------------------------------


def _valid_table(value: bytes, generation: int) -> dict[bytes, bytes]:
    table: dict[bytes, bytes] = {}
    _store(chunked.split(b"7", value, generation), table)
    return table


@FUZZ
@given(st.binary(max_size=64))
def test_header_of_any_bytes_is_a_header_none_or_corrupt_state(data: bytes) -> None:
    try:
        parsed = chunked.header(data)
    except CorruptState:
        return
    if parsed is not None:
        generation, count = parsed
        assert 0 <= generation <= chunked.MAX_GENERATION and 1 <= count <= chunked.MAX_CHUNKS


@FUZZ
@given(
    st.binary(max_size=2_000),
    st.integers(0, chunked.MAX_GENERATION),
    st.data(),
)
def test_join_of_mutated_records_returns_bytes_or_raises_corrupt_state(
    value: bytes, generation: int, data: st.DataObject
) -> None:
    table = _valid_table(value, generation)
    assert chunked.join(table.get, b"7") == value  # the valid round trip is exact
    key = data.draw(st.sampled_from(sorted(table)))
    mutation = data.draw(st.sampled_from(["drop", "truncate", "flip", "replace", "append"]))
    stored = table[key]
    if mutation == "drop":
        del table[key]
    elif mutation == "truncate":
        table[key] = stored[: data.draw(st.integers(0, max(0, len(stored) - 1)))]
    elif mutation == "flip" and stored:
        at = data.draw(st.integers(0, len(stored) - 1))
        table[key] = (
            stored[:at] + bytes([stored[at] ^ data.draw(st.integers(1, 255))]) + stored[at + 1 :]
        )
    elif mutation == "replace":
        table[key] = data.draw(st.binary(max_size=64))
    else:
        table[key] = stored + data.draw(st.binary(min_size=1, max_size=16))
    try:
        out = chunked.join(table.get, b"7")
    except CorruptState:
        return
    assert out is None or isinstance(out, bytes)
