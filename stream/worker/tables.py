"""The worker tables' changelog codecs, and the guard that keeps a forged record out of them.

Anyone who can produce to the broker can write a changelog record. Faust decodes a changelog
record before its table sees it, and an exception there ends the table's recovery loop for
good (seen: one record ``[2, "x"]`` in the users changelog, then ``/health`` answered 503
``tables_recovered: false`` forever, on every restart). So the codecs here never raise when
they load: anything undecodable becomes a ``Corrupt`` value, and the guard installed on each
table (``guard_changelog``) drops such records, and records whose key does not fit the table,
before they are applied: counted in ``shopscore_state_records_rejected_total{table}``, logged
once per key, and recovery goes on. The key keeps its previous value (or stays absent).

The ``users`` and ``scores`` codecs keep a record of the current (compressed) format as its
bytes, checked only for its shape: it is decoded, and checked in full, when its user is first
touched (``stream.worker.state_cache``), which is what keeps recovery and RSS about the bytes.
Records of older formats are decoded here, as before.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from faust.serializers import codecs

from stream.errors import CorruptState
from stream.features import UserState, decode_state, encode_state
from stream.features.codec import is_packed_state
from stream.scoring.state import UserScores
from stream.settings import Limits
from stream.worker.metrics import Metrics

__all__ = [
    "CLOCK_CODEC",
    "SCORES_CODEC",
    "STATE_CODEC",
    "Corrupt",
    "check_clock",
    "check_learners",
    "check_scores",
    "check_users",
    "decode_scores",
    "decode_user",
    "guard_changelog",
    "touch_rejections",
]

log = logging.getLogger("shopscore")

STATE_CODEC = "shopscore_state"
SCORES_CODEC = "shopscore_scores"
CLOCK_CODEC = "shopscore_clock"

#: Rejected keys logged one by one per table; past this, rejections are only counted.
MAX_LOGGED_KEYS = 100
#: The largest learners record kept: a chunk is 256 KiB; a checkpoint written before chunking
#: was one record (it grew past 1 MB in a 20,000-user replay, so a generous bound).
MAX_LEARNERS_RECORD = 64 * 2**20


@dataclass(frozen=True, slots=True)
class Corrupt:
    """What a codec returns for bytes it cannot decode (never stored: the guard drops it)."""

    detail: str


def _safe_loads(decode: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return decode(data)
    except Exception as exc:  # every decoder raises CorruptState; anything else is caught too
        return Corrupt(str(exc)[:200] or type(exc).__name__)


class _UserStateCodec(codecs.Codec):
    """``UserState`` in the feature core's compact form, kept as bytes when it has the current
    format's shape (the table holds bytes); older formats load decoded, undecodable bytes as
    ``Corrupt``."""

    def _dumps(self, obj: Any) -> bytes:
        return obj if isinstance(obj, bytes) else encode_state(obj)

    def _loads(self, s: bytes) -> Any:
        if is_packed_state(s):
            return bytes(s)
        return _safe_loads(decode_state, s)


class _UserScoresCodec(codecs.Codec):
    """``UserScores``, kept as bytes in the current format (as ``_UserStateCodec``)."""

    def _dumps(self, obj: Any) -> bytes:
        return obj if isinstance(obj, bytes) else obj.to_bytes()

    def _loads(self, s: bytes) -> Any:
        if UserScores.is_packed(s):
            return bytes(s)
        return _safe_loads(UserScores.from_bytes, s)


_DIGITS = re.compile(rb"[0-9]{1,16}")


def _decode_clock(data: bytes) -> int:
    if not _DIGITS.fullmatch(data):
        raise ValueError(f"not an epoch-ms integer: {data[:40]!r}")
    return int(data)


class _ClockCodec(codecs.Codec):
    """A clock partition's event time as decimal digits (the bytes Faust's JSON codec wrote for
    an int before, so old changelogs read the same); anything else loads as ``Corrupt``."""

    def _dumps(self, obj: Any) -> bytes:
        return b"%d" % obj

    def _loads(self, s: bytes) -> Any:
        return _safe_loads(_decode_clock, s)


codecs.register(STATE_CODEC, _UserStateCodec())
codecs.register(SCORES_CODEC, _UserScoresCodec())
codecs.register(CLOCK_CODEC, _ClockCodec())


# -- what each table accepts ------------------------------------------------------------------
# A check takes a changelog event (its key is raw bytes, its value decoded) and returns why it
# is refused, or None.


def _utf8_key(key: Any, limits: Limits) -> str | None:
    if not isinstance(key, bytes) or not key:
        return "empty or non-bytes key"
    if len(key) > 4 * limits.max_string:
        return f"key of {len(key)} bytes"
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        return "key is not UTF-8"
    return None


def check_users(limits: Limits) -> Callable[[Any], str | None]:
    """A users record: a decoded ``UserState`` stored under its own user id, or the packed
    bytes of one under a valid key (``decode_user``, on first touch, checks the rest)."""

    def check(event: Any) -> str | None:
        value = event.value
        if isinstance(value, Corrupt):
            return value.detail
        if isinstance(value, bytes):
            return _utf8_key(event.key, limits)
        if not isinstance(value, UserState):
            return f"not a user state ({type(value).__name__})"
        key = event.key
        if (problem := _utf8_key(key, limits)) is not None:
            return problem
        if value.user_id.encode() != key:
            return "the state's user_id is not its key"
        return None

    return check


def check_scores(limits: Limits) -> Callable[[Any], str | None]:
    """A scores record: a decoded ``UserScores`` under a user id."""

    def check(event: Any) -> str | None:
        value = event.value
        if isinstance(value, Corrupt):
            return value.detail
        if not isinstance(value, UserScores | bytes):
            return f"not a scoring state ({type(value).__name__})"
        return _utf8_key(event.key, limits)

    return check


def decode_user(key: bytes, data: bytes) -> UserState:
    """A users record's bytes, decoded and checked as ``check_users`` checks a decoded one."""
    state = decode_state(data)
    if state.user_id.encode() != key:
        raise CorruptState("user state", "the state's user_id is not its key")
    return state


def decode_scores(key: bytes, data: bytes) -> UserScores:
    """A scores record's bytes, decoded (the key was checked at recovery)."""
    return UserScores.from_bytes(data)


_LEARNERS_KEY = re.compile(rb"([0-9]{1,6})(?:#[0-9]{1,12}#[0-9]{1,6})?")


def check_learners(event: Any) -> str | None:
    """A learners record: the partition's own number (or one of its chunks), bytes of bounded
    size. Whether the bytes are a valid checkpoint is judged when it is loaded."""
    key = event.key
    match = _LEARNERS_KEY.fullmatch(key) if isinstance(key, bytes) else None
    if match is None:
        return "not a learners key"
    if int(match.group(1)) != event.message.partition:
        return f"learners of partition {int(match.group(1))} on partition {event.message.partition}"
    value = event.value
    if not isinstance(value, bytes):
        return f"not bytes ({type(value).__name__})"
    if len(value) > MAX_LEARNERS_RECORD:
        return f"{len(value)} bytes"
    return None


def check_clock(limits: Limits, now_ms: Callable[[], int]) -> Callable[[Any], str | None]:
    """A clock record: the partition's own number, an event time within the bounds an event's
    timestamp must keep (``Limits``), judged against the wall clock when it is read."""

    def check(event: Any) -> str | None:
        value = event.value
        if isinstance(value, Corrupt):
            return value.detail
        if event.key != b"%d" % event.message.partition:
            return "not the partition's clock key"
        if not isinstance(value, int) or isinstance(value, bool):
            return f"not an int ({type(value).__name__})"
        if value < limits.min_ts_ms:
            return f"clock {value} is before {limits.min_ts_ms}"
        if value > now_ms() + limits.max_future_ms:
            return f"clock {value} is in the future"
        return None

    return check


# -- the guard ----------------------------------------------------------------------------------


class _RejectionLog:
    """Logs each rejected key of a table once (the first ``MAX_LOGGED_KEYS``), then only says
    how many more there were, at most once a minute."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.logged: set[bytes] = set()
        self.unlogged = 0
        self._said_at = 0.0

    def record(self, event: Any, problem: str) -> None:
        key = event.key if isinstance(event.key, bytes) else repr(event.key).encode()
        message = event.message
        where = f"{message.topic}[{message.partition}]@{message.offset}"
        self.note(key, f"skipping an undecodable {self.table} changelog record", where, problem)

    def note(self, key: bytes, what: str, where: str, problem: str) -> None:
        if key in self.logged:
            return
        if len(self.logged) < MAX_LOGGED_KEYS:
            self.logged.add(key)
            log.warning("%s (key %r, %s): %s", what, key[:80], where, problem)
            return
        self.unlogged += 1
        now = time.monotonic()
        if now - self._said_at >= 60.0:
            self._said_at = now
            log.warning(
                "%d more undecodable %s changelog records skipped (counted in "
                "shopscore_state_records_rejected_total, not logged one by one)",
                self.unlogged,
                self.table,
            )


def guard_changelog(
    table: Any, name: str, check: Callable[[Any], str | None], metrics: Metrics
) -> _RejectionLog:
    """Make ``table`` skip the changelog records ``check`` refuses when it recovers (and in
    standby). Deletions (tombstones) always pass. Returns the table's log of rejected keys."""
    apply = table.apply_changelog_batch
    rejections = _RejectionLog(name)
    counter = metrics.state_rejected.labels(name)

    def apply_changelog_batch(batch: Iterable[Any]) -> None:
        kept = []
        for event in batch:
            if event.message.value is not None:
                try:
                    problem = check(event)
                except Exception as exc:  # a check must never stop recovery either
                    problem = f"check failed: {exc!r}"[:200]
                if problem is not None:
                    counter.inc()
                    rejections.record(event, problem)
                    continue
            kept.append(event)
        apply(kept)

    table.apply_changelog_batch = apply_changelog_batch
    return rejections


def touch_rejections(
    rejections: _RejectionLog, name: str, metrics: Metrics
) -> Callable[[bytes, str], None]:
    """What a ``DecodedTable`` calls for a stored record it cannot decode when first touched:
    counted and logged like a record refused at recovery (once per key)."""
    counter = metrics.state_rejected.labels(name)

    def rejected(key: bytes, problem: str) -> None:
        counter.inc()
        rejections.note(
            key,
            f"ignoring an undecodable {name} record; the user starts afresh",
            "read when first touched",
            problem,
        )

    return rejected
