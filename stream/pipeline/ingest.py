"""One micro-batch of raw input messages in; state updates, dead letters and counts out.

This is the logic of the ingest agent without Faust, so it is tested without a broker and the
agent stays a thin loop: decode, validate, apply to the user's state, collect what to send.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from stream.contract.dlq import bound_key, dlq_record
from stream.contract.events import KIND_OF_TOPIC, Event
from stream.contract.validation import decode_event
from stream.errors import Rejected
from stream.features import FeatureConfig, Outcome, UserState, apply_event
from stream.settings import Limits

__all__ = [
    "BatchResult",
    "RawMessage",
    "apply_clean",
    "clean_message",
    "dead_letter",
    "ingest_batch",
]

log = logging.getLogger("shopscore.ingest")


class RawMessage(NamedTuple):
    """A consumed message, with ``topic`` as the contract name (prefix removed)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class BatchResult:
    """What a batch changed. ``touched`` maps user id -> index of its last message in the batch
    (the agent writes each user's state once per batch, in that message's partition)."""

    states: dict[str, UserState] = field(default_factory=dict)
    touched: dict[str, Any] = field(default_factory=dict)
    applied: list[Event] = field(default_factory=list)
    #: Duplicates recognised (already applied before, e.g. redelivered after a crash).
    redelivered: list[Event] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, dict]] = field(default_factory=list)
    misrouted: list[tuple[Any, str]] = field(default_factory=list)
    consumed: Counter[str] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)


def ingest_batch(
    messages: Sequence[RawMessage],
    load_state: Callable[[str], UserState | None],
    *,
    now_ms: int,
    limits: Limits,
    features: FeatureConfig,
    owns: Callable[[str, int], bool] = lambda user_id, partition: True,
) -> BatchResult:
    """Clean and apply ``messages`` in arrival order (``clean_message`` then ``apply_clean``);
    ``touched`` maps each user to the index of their last message."""
    result = BatchResult()
    valid = []
    for index, msg in enumerate(messages):
        event = clean_message(msg, index, result, now_ms=now_ms, limits=limits, owns=owns)
        if event is not None:
            valid.append((index, msg, event))
    apply_clean(valid, load_state, result, features=features, now_ms=now_ms)
    return result


def clean_message(
    msg: RawMessage,
    ref: Any,
    result: BatchResult,
    *,
    now_ms: int,
    limits: Limits,
    owns: Callable[[str, int], bool],
    check_future: bool = True,
) -> Event | None:
    """Count ``msg`` and validate it: the clean event, or None when it was dead-lettered or is
    to be re-published to the partition that owns its user (``misrouted``).

    ``owns(user_id, partition)`` says whether that partition is where the user's state lives.
    Any event on another partition is re-published, whatever its Kafka key: an event keyed by
    its user_id but placed by another partitioner than the worker's (librdkafka's CRC32) would
    otherwise split the user's state across partitions, and so across workers.

    ``check_future`` False skips the future-timestamp rule (an old log replayed offline has no
    meaningful "now"); ``now_ms`` still stamps the dead letters.

    Nothing escapes: an unexpected error while decoding or checking is dead-lettered as
    ``processing_error`` (and logged), so every consumed message is accounted for.
    """
    result.consumed[msg.topic] += 1
    try:
        event = decode_event(
            KIND_OF_TOPIC[msg.topic],
            msg.value,
            now_ms=now_ms if check_future else None,
            limits=limits,
        )
        in_place = owns(event.user_id, msg.partition)
    except Rejected as rejected:
        dead_letter(result, msg, rejected.reason, rejected.detail, now_ms)
        return None
    except Exception as exc:  # a bug in a cleaning rule must not stop the partition
        log.exception(
            "cleaning %s partition %s offset %s failed", msg.topic, msg.partition, msg.offset
        )
        dead_letter(result, msg, "processing_error", repr(exc)[:500], now_ms)
        return None
    if not in_place:
        result.misrouted.append((ref, event.user_id))
        return None
    return event


def apply_clean(
    items: Sequence[tuple[Any, RawMessage, Event]],
    load_state: Callable[[str], UserState | None],
    result: BatchResult,
    *,
    features: FeatureConfig,
    now_ms: int,
) -> None:
    """Apply clean events to their users' states in the given order. ``touched`` maps each
    user to the ``ref`` of their last item (the agent writes each state once per batch)."""
    states = result.states
    for ref, msg, event in items:
        user_id = event.user_id
        try:
            state = states.get(user_id)
            if state is None:
                state = load_state(user_id) or UserState(user_id)
                states[user_id] = state
            outcome = apply_event(state, event, features)
        except Exception as exc:
            # A bug must not cost data: Faust acks a batch even when its body raises, so the
            # event is dead-lettered (replayable) and the batch goes on.
            log.exception("processing %s offset %s failed", msg.topic, msg.offset)
            dead_letter(result, msg, "processing_error", repr(exc)[:500], now_ms)
            continue
        result.touched[user_id] = ref
        if outcome is Outcome.DUPLICATE:
            result.duplicates[msg.topic] += 1
            result.redelivered.append(event)
        elif outcome is Outcome.LATE:
            behind = (state.max_ts or 0) - event.ts
            dead_letter(result, msg, "late", f"{behind} ms behind the user's newest event", now_ms)
        elif outcome is Outcome.CONFLICT:
            # A reused id with other content is neither a redelivery nor a new event: merging
            # it would let anyone rewrite an applied event, so it is refused and dead-lettered.
            dead_letter(
                result,
                msg,
                "conflicting_duplicate",
                f"event_id {event.event_id[:64]!r} was applied before with different content",
                now_ms,
            )
        else:
            result.applied.append(event)


def dead_letter(result: BatchResult, msg: RawMessage, reason: str, detail: str, now: int) -> None:
    """Count ``msg`` as rejected and queue its DLQ record; the key kept is bounded
    (``stream.contract.dlq.bound_key``; the record says how it was cut), the record is sent with
    ``stream.contract.dlq.dlq_message``."""
    result.rejected[(msg.topic, reason)] += 1
    result.dead_letters.append(
        (
            bound_key(msg.key),
            dlq_record(
                raw=msg.value,
                source_topic=msg.topic,
                reason=reason,
                detail=detail,
                partition=msg.partition,
                offset=msg.offset,
                rejected_at_ms=now,
                key=msg.key,
            ),
        )
    )
