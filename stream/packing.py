"""Per-user changelog records compressed with zstd and a dictionary trained on such records.

A user's state is a few kilobytes of JSON (feature state, scoring state) whose keys, model
names, id prefixes and number shapes repeat from user to user and from record to record:
compressed one record at a time without help, zstd has too little of each record to learn
them from; primed with a dictionary of what such records share, it writes 3 to 4 times fewer
bytes (``docs/benchmarks.md``) in ~15 us per record, and reads one back in ~5 us.

The dictionaries are trained on generated traffic (``scripts/train_state_dictionaries.py``)
and shipped in the package under ``stream/dictionaries``. Each has a fixed zstd dictionary id,
written in every frame it compressed, so a record always names the dictionary it needs: a new
dictionary gets a new id and the old ones stay, so old records keep reading. A record that names
no shipped dictionary, or is not zstd, or inflates past its bound is ``CorruptState``.
"""

from __future__ import annotations

import functools
from importlib import resources

import zstandard

from stream import strict

__all__ = [
    "DICTIONARIES",
    "SCORES_DICTIONARY",
    "USERS_DICTIONARY",
    "is_packed",
    "pack",
    "unpack",
]

#: zstd dictionary ids of the shipped dictionaries, by file name under ``stream/dictionaries``.
USERS_DICTIONARY = 11_001
#: The second scoring-state dictionary: the first was trained before pending churn predictions
#: kept the BTYD expert's view and the churn messages its figures (records written with it read
#: on, by the id they name).
SCORES_DICTIONARY = 12_002
DICTIONARIES = {
    USERS_DICTIONARY: "users-1.zdict",
    12_001: "scores-1.zdict",
    SCORES_DICTIONARY: "scores-2.zdict",
}

#: zstd's level 1: these records came out as small as at its default level 3 (feature states)
#: or 4% larger (scoring states), in two thirds of the time, measured.
_LEVEL = 1


@functools.cache
def _dictionary(dict_id: int) -> zstandard.ZstdCompressionDict:
    name = DICTIONARIES[dict_id]
    data = resources.files("stream").joinpath("dictionaries", name).read_bytes()
    dictionary = zstandard.ZstdCompressionDict(data)
    if dictionary.dict_id() != dict_id:
        raise RuntimeError(f"{name} has dictionary id {dictionary.dict_id()}, not {dict_id}")
    return dictionary


@functools.cache
def _compressor(dict_id: int) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=_LEVEL, dict_data=_dictionary(dict_id))


@functools.cache
def _decompressor(dict_id: int) -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(dict_data=_dictionary(dict_id))


def pack(data: bytes, dict_id: int) -> bytes:
    """``data`` as one zstd frame compressed with the shipped dictionary ``dict_id``."""
    return _compressor(dict_id).compress(data)


#: The first bytes of every zstd frame.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def is_packed(data: bytes, prefix: bytes) -> bool:
    """Whether ``data`` is ``prefix`` then a zstd frame: the shape of a packed record, told
    without decompressing it (whether it inflates and decodes is only known by ``unpack``).

    >>> is_packed(b"\x04" + pack(b"[]", USERS_DICTIONARY), b"\x04"), is_packed(b"[4]", b"\x04")
    (True, False)
    """
    return data[: len(prefix)] == prefix and data[len(prefix) : len(prefix) + 4] == _ZSTD_MAGIC


def unpack(frame: bytes, max_bytes: int) -> bytes:
    """What ``pack`` compressed, or ``CorruptState`` (not a zstd frame, a dictionary that is not
    shipped, more than ``max_bytes`` inflated, or a damaged frame).

    >>> unpack(pack(b'["u1"]', USERS_DICTIONARY), 64)
    b'["u1"]'
    """
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise strict.fail(f"not a zstd frame ({exc})"[:200]) from None
    if params.dict_id not in DICTIONARIES:
        raise strict.fail(f"compressed with unknown dictionary {params.dict_id}")
    if not 0 <= params.content_size <= max_bytes:  # pack always writes the size
        raise strict.fail(f"inflates to {params.content_size} bytes (at most {max_bytes})")
    try:
        return _decompressor(params.dict_id).decompress(frame, max_output_size=max_bytes)
    except zstandard.ZstdError as exc:
        raise strict.fail(f"a damaged zstd frame ({exc})"[:200]) from None
