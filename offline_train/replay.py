"""Replaying an event log through the service's own cleaning rules and feature core.

This is the offline runner of design principle 1: the same ``decode_event`` and
``apply_event`` the worker runs, in the same event-time order ``shopscore replay`` publishes,
so a user's offline state equals the worker's (a test checks it against a real worker).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stream.contract.events import Event
from stream.contract.validation import decode_event
from stream.errors import Rejected
from stream.features import FeatureConfig, UserState, apply_event
from stream.settings import Limits
from stream.tools.replay import read_log

__all__ = ["OfflineReplay", "clean_events", "replay_log"]


@dataclass
class OfflineReplay:
    states: dict[str, UserState] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)


def clean_events(
    path: str | Path, *, now_ms: int | None, limits: Limits | None = None
) -> Iterator[Event | Rejected]:
    """The log's events in publishing order, each cleaned, or the ``Rejected`` it raised."""
    limits = limits or Limits()
    for event in read_log(path):
        try:
            yield decode_event(event.kind, event.payload, now_ms=now_ms, limits=limits)
        except Rejected as rejected:
            yield rejected


def replay_log(
    path: str | Path,
    config: FeatureConfig | None = None,
    *,
    now_ms: int | None = None,
    limits: Limits | None = None,
) -> OfflineReplay:
    """Every user's state after applying the log, with the tally of what happened to events."""
    config = config or FeatureConfig()
    out = OfflineReplay()
    for item in clean_events(path, now_ms=now_ms, limits=limits):
        if isinstance(item, Rejected):
            out.rejected[item.reason] += 1
            continue
        state = out.states.get(item.user_id)
        if state is None:
            state = out.states[item.user_id] = UserState(item.user_id)
        out.outcomes[apply_event(state, item, config).value] += 1
    return out
