"""Strict, bounded checks for the changelog decoders: a value either has the expected type and
bounds, or ``CorruptState`` is raised (never another exception).

The changelogs are written by anyone who can produce to the broker, so a decoder must not trust
a field's type or size: an out-of-range integer, a string of a megabyte or a list where a number
belongs would otherwise crash scoring later, far from the record that caused it. Every check
here only *checks*: it never converts (an int stays an int), so what decodes re-encodes to the
same bytes.

>>> need_int(3, "count", 0, 10), need_num(2.5, "price"), need_str("u1", "user_id")
(3, 2.5, 'u1')
>>> need_int(True, "count")
Traceback (most recent call last):
...
stream.errors.CorruptState: state: count must be an integer, got bool
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import orjson

from stream.errors import CorruptState

T = TypeVar("T")

__all__ = [
    "MAX_COUNT",
    "MAX_ENTRIES",
    "MAX_NUMBER",
    "MAX_STRING",
    "MAX_TS",
    "decoded",
    "fail",
    "need_bool",
    "need_dict",
    "need_int",
    "need_json",
    "need_list",
    "need_num",
    "need_str",
    "opt_int",
    "opt_str",
    "versioned_array",
]

#: Longest string kept in a state (ids, categories; the cleaning rules allow 256 by default).
MAX_STRING = 65_536
#: Most entries of any one list or dict in a state.
MAX_ENTRIES = 1_000_000
#: Largest magnitude of a stored number: far beyond any real count, spend or price, and far
#: below float overflow, so nothing computed from a stored value overflows.
MAX_NUMBER = 1e18
#: Largest counter (an int that only grows: events, sessions, duplicates).
MAX_COUNT = 2**53
#: Largest event time (epoch ms, year ~33,700), the bound the cleaning rules use too.
MAX_TS = 10**15


def fail(detail: str, what: str = "state") -> CorruptState:
    return CorruptState(what, detail)


def decoded(what: str, decode: Callable[[Any], T], data: Any) -> T:
    """``decode(data)``, with every failure a ``CorruptState`` about ``what``: the checks'
    own, and, as a safety net, anything they left to raise."""
    try:
        return decode(data)
    except CorruptState as exc:
        raise CorruptState(what, exc.detail) from None
    except Exception as exc:
        raise CorruptState(what, f"undecodable: {exc!r}"[:300]) from None


def versioned_array(data: Any, *, max_bytes: int, formats: tuple[int, ...], fields: int) -> list:
    """The fields of a changelog value written as ``orjson.dumps([format, ...])``: bounded in
    size, a JSON array of exactly ``fields`` items whose first is one of ``formats``.

    >>> versioned_array(b"[2, 5]", max_bytes=64, formats=(2,), fields=2)
    [2, 5]
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise fail(f"not bytes ({_kind(data)})")
    if len(data) > max_bytes:
        raise fail(f"{len(data)} bytes > {max_bytes}")
    try:
        values = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise fail(f"not JSON: {exc}"[:200]) from None
    if type(values) is not list or not values:
        raise fail("not a non-empty JSON array")
    fmt = values[0]
    if type(fmt) is not int or fmt not in formats:
        raise fail(f"unknown format {str(fmt)[:20]!r}; replay the changelog")
    if len(values) != fields:
        raise fail(f"expected {fields} fields, got {len(values)}")
    return values


def _kind(value: Any) -> str:
    return type(value).__name__


def need_int(value: Any, name: str, lo: int = 0, hi: int = MAX_COUNT) -> int:
    if type(value) is not int:
        raise fail(f"{name} must be an integer, got {_kind(value)}")
    if not lo <= value <= hi:
        raise fail(f"{name} is out of range [{lo}, {hi}]")
    return value


def opt_int(value: Any, name: str, lo: int = 0, hi: int = MAX_TS) -> int | None:
    return None if value is None else need_int(value, name, lo, hi)


def need_num(value: Any, name: str, lo: float = -MAX_NUMBER, hi: float = MAX_NUMBER) -> int | float:
    """A finite number (an int is a number too, and stays an int) within ``[lo, hi]``."""
    if type(value) is int:
        if not lo <= value <= hi:
            raise fail(f"{name} is out of range")
        return value
    if type(value) is not float:
        raise fail(f"{name} must be a number, got {_kind(value)}")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise fail(f"{name} is not a finite number in range")
    return value


def need_nums(
    values: Iterable[Any], name: str, lo: float = -MAX_NUMBER, hi: float = MAX_NUMBER
) -> None:
    """``need_num`` on every item, in one pass: a state holds thousands of them (a NaN fails
    the range comparison, as does an infinity; a bool is neither an int nor a float here).

    >>> need_nums([1, 2.5], "x")
    >>> need_nums([1, True], "x")
    Traceback (most recent call last):
    ...
    stream.errors.CorruptState: state: x must be a number, got bool
    """
    for value in values:
        kind = type(value)
        if (kind is not float and kind is not int) or not lo <= value <= hi:
            need_num(value, name, lo, hi)


def need_bool(value: Any, name: str) -> bool:
    if type(value) is not bool:
        raise fail(f"{name} must be a boolean, got {_kind(value)}")
    return value


def need_str(value: Any, name: str, max_len: int = MAX_STRING) -> str:
    if type(value) is not str:
        raise fail(f"{name} must be a string, got {_kind(value)}")
    if len(value) > max_len:
        raise fail(f"{name} is longer than {max_len} characters")
    return value


def opt_str(value: Any, name: str, max_len: int = MAX_STRING) -> str | None:
    return None if value is None else need_str(value, name, max_len)


def need_list(
    value: Any, name: str, max_len: int = MAX_ENTRIES, length: int | None = None
) -> list[Any]:
    if type(value) is not list:
        raise fail(f"{name} must be a list, got {_kind(value)}")
    if length is not None and len(value) != length:
        raise fail(f"{name} must have {length} entries, has {len(value)}")
    if len(value) > max_len:
        raise fail(f"{name} has more than {max_len} entries")
    return value


def need_dict(value: Any, name: str, max_len: int = MAX_ENTRIES) -> dict[str, Any]:
    """A dict (JSON keys are always strings) of at most ``max_len`` entries."""
    if type(value) is not dict:
        raise fail(f"{name} must be an object, got {_kind(value)}")
    if len(value) > max_len:
        raise fail(f"{name} has more than {max_len} entries")
    return value


def need_json(value: Any, name: str, max_depth: int = 16, budget: int = 100_000) -> Any:
    """Any JSON value nested at most ``max_depth`` deep with at most ``budget`` nodes, strings
    bounded (iterative: a deep value cannot exhaust the interpreter's recursion limit)."""
    stack = [(value, 0)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > budget:
            raise fail(f"{name} has more than {budget} values")
        if depth > max_depth:
            raise fail(f"{name} is nested deeper than {max_depth}")
        kind = type(item)
        if kind is dict:
            for key, sub in item.items():
                need_str(key, f"{name} key")
                stack.append((sub, depth + 1))
        elif kind is list:
            stack.extend((sub, depth + 1) for sub in item)
        elif kind is str:
            need_str(item, name)
        elif kind is float:
            need_num(item, name, -math.inf, math.inf)
        elif item is not None and kind not in (int, bool):
            raise fail(f"{name} holds a {kind.__name__}")
    return value
