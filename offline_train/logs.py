"""Event logs (JSONL or Parquet) as cleaned events in the order the service would apply them.

Both formats go through the service's own cleaning rules (``stream.contract.validation``), sorted by
event time exactly as ``shopscore replay`` publishes them (stable for ties; a line whose ``ts``
cannot be parsed keeps its place and is then rejected), so a training set sees what a worker
would have seen. Rejected events are counted by reason, never silently dropped.

Memory matters: a 20,000-user, 150-day log has five million events. ``EventLog`` keeps only
each line's bytes and sort key and decodes events while iterating, so a replay holds one
event at a time rather than five million objects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from stream.contract.events import CartChange, Click, Event
from stream.contract.validation import parse_ts, validate_object
from stream.errors import Rejected, TrainingError
from stream.settings import Limits

__all__ = ["EventList", "EventLog", "EventSource", "read_events"]

_KINDS = ("click", "cart", "order")


@dataclass
class EventSource:
    """Events in event-time order plus what a training run needs to know before replaying
    them (span and counts, for the split and the sampling rates)."""

    first_ts: int = 0
    last_ts: int = 0
    n_events: int = 0
    n_users: int = 0
    n_actions: int = 0  # clicks and cart adds: interest prediction points
    n_adds: int = 0  # cart adds: recommendation prediction points
    rejected: Counter[str] = field(default_factory=Counter)

    def __iter__(self) -> Iterator[Event]:
        raise NotImplementedError


@dataclass
class EventList(EventSource):
    """Events already in memory (tests, small logs)."""

    events: Sequence[Event] = ()

    @classmethod
    def of(cls, events: Iterable[Event]) -> EventList:
        events = sorted(events, key=lambda e: e.ts)
        if not events:
            raise TrainingError("no valid event to train on")
        return cls(
            first_ts=events[0].ts,
            last_ts=events[-1].ts,
            n_events=len(events),
            n_users=len({e.user_id for e in events}),
            n_actions=sum(1 for e in events if _is_action(e)),
            n_adds=sum(1 for e in events if isinstance(e, CartChange) and e.action == "add"),
            events=events,
        )

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)


@dataclass
class EventLog(EventSource):
    """A log file's lines sorted by event time; events are cleaned while iterating.

    ``rejected`` counts the refused lines of the latest iteration.
    """

    path: Path = Path()
    limits: Limits = field(default_factory=Limits)
    unroutable: int = 0  # lines that are not JSON objects with a known ``type``
    _lines: list[bytes] = field(default_factory=list, repr=False)

    def __iter__(self) -> Iterator[Event]:
        self.rejected = Counter({"unroutable": self.unroutable} if self.unroutable else {})
        for line in self._lines:
            obj = orjson.loads(line)
            kind = obj.pop("type", None)
            try:
                if kind not in _KINDS:
                    raise Rejected("bad_value", f"unknown event type {kind!r}")
                yield validate_object(kind, obj, now_ms=None, limits=self.limits)
            except Rejected as rejected:
                self.rejected[rejected.reason] += 1


def _is_action(e: Event) -> bool:
    return isinstance(e, Click) or (isinstance(e, CartChange) and e.action == "add")


def read_events(path: str | Path, limits: Limits | None = None) -> EventLog:
    """Index a ``.jsonl`` (as ``shopscore generate`` writes) or ``.parquet`` log."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no event log at {path}")
    lines = _parquet_lines(path) if path.suffix == ".parquet" else _jsonl_lines(path)
    keyed: list[tuple[int, int, bytes]] = []
    users: set[object] = set()
    n_actions = n_adds = unroutable = 0
    last = 0
    for seq, line in enumerate(lines):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            unroutable += 1
            continue
        if not isinstance(obj, dict) or obj.get("type") not in _KINDS:
            unroutable += 1
            continue
        try:
            ts = last = parse_ts(obj.get("ts"))
        except Rejected:
            ts = last  # keeps its place, rejected while iterating
        kind = obj["type"]
        users.add(obj.get("user_id"))
        if kind == "click" or (kind == "cart" and obj.get("action") == "add"):
            n_actions += 1
            n_adds += kind == "cart"
        keyed.append((ts, seq, line))
    if not keyed:
        raise TrainingError(f"{path} holds no event (of type click, cart or order)")
    keyed.sort(key=lambda k: (k[0], k[1]))
    return EventLog(
        first_ts=keyed[0][0],
        last_ts=keyed[-1][0],
        n_events=len(keyed),
        n_users=len(users),
        n_actions=n_actions,
        n_adds=n_adds,
        path=path,
        limits=limits or Limits(),
        unroutable=unroutable,
        _lines=[k[2] for k in keyed],
    )


def _jsonl_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield line


def _parquet_lines(path: Path) -> Iterator[bytes]:
    """Rows of a Parquet log (one column per field, ``type`` included; ``items`` a list of
    structs) as JSON. Parquet fills absent fields with null: those are dropped, so a missing
    optional field gets its default exactly as in JSON."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TrainingError(
            "reading Parquet needs pyarrow: install the train extra: pip install 'shopscore[train]'"
        ) from None
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
        for row in batch.to_pylist():
            yield orjson.dumps(_drop_nulls(row))


def _drop_nulls(value: object) -> object:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value
