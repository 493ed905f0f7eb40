"""Cleaning rules: raw bytes or a decoded object in, a typed event out, or ``Rejected(reason)``.

Every rule is listed in docs/contracts.md ("Cleaning rules") with its reason code; each has a
test. The rules are strict about types (a price of ``"12"`` is refused, not guessed) and
lenient only where that page gives a default (quantity 1, category ``unknown``, order total
from its lines). ``now_ms`` is passed in, never read here, so replaying a log is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import orjson

from stream.contract.events import UNKNOWN_CATEGORY, CartChange, Click, Event, Order, OrderLine
from stream.errors import Rejected
from stream.settings import Limits

__all__ = ["REASONS", "decode_clock", "decode_event", "parse_ts", "validate_object"]

#: Every reason code an input event can be rejected with (``late`` comes from the feature state).
REASONS: dict[str, str] = {
    "too_large": "payload exceeds max_payload_bytes",
    "not_json": "payload is not UTF-8 JSON (NaN/Infinity are not JSON)",
    "not_object": "payload is JSON but not an object",
    "missing_field": "a required field is absent or null",
    "bad_type": "a field has the wrong JSON type",
    "bad_value": "a field has the right type but a meaningless value (empty id, unknown action)",
    "bad_timestamp": "ts is neither epoch milliseconds nor an ISO-8601 string",
    "ts_out_of_range": "ts is before min_ts (often epoch seconds sent as milliseconds)",
    "future_timestamp": "ts is more than max_future ahead of the worker's clock",
    "negative_value": "a price, quantity or total is negative",
    "out_of_bounds": "a value or string is beyond its configured bound",
    "late": "ts is older than the user's allowed lateness",
    "conflicting_duplicate": "the event_id was applied before with different content",
    "processing_error": "an unexpected error while decoding, validating or applying an event "
    "(a bug; see the log)",
}

_REQUIRED: dict[str, tuple[str, ...]] = {
    "click": ("event_id", "user_id", "ts", "item_id"),
    "cart": ("event_id", "user_id", "ts", "item_id", "action"),
    "order": ("event_id", "user_id", "ts", "order_id", "items"),
}


def _json_object(raw: bytes | None, limits: Limits) -> dict[str, Any]:
    """The JSON object a message value holds (bounded in size), or ``Rejected``."""
    if raw is None:
        raise Rejected("not_json", "empty message value")
    if len(raw) > limits.max_payload_bytes:
        raise Rejected("too_large", f"{len(raw)} bytes > {limits.max_payload_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejected("not_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise Rejected("not_object", f"JSON {type(obj).__name__}, expected an object")
    return obj


def decode_event(kind: str, raw: bytes | None, *, now_ms: int | None, limits: Limits) -> Event:
    """Decode one Kafka message value of topic ``kind`` into a clean event or raise ``Rejected``."""
    obj = _json_object(raw, limits)
    return validate_object(kind, obj, now_ms=now_ms, limits=limits)


def validate_object(
    kind: str, obj: Mapping[str, Any], *, now_ms: int | None, limits: Limits
) -> Event:
    """Apply the cleaning rules to a decoded object. ``now_ms=None`` skips the future check
    (offline replays of old logs have no meaningful "now")."""
    for name in _REQUIRED[kind]:
        if obj.get(name) is None:
            raise Rejected("missing_field", f"{kind} event needs {name!r}")
    event_id = _ident(obj, "event_id", limits)
    user_id = _ident(obj, "user_id", limits)
    ts = _checked_ts(obj["ts"], now_ms, limits)
    session_id = _optional_ident(obj, "session_id", limits)
    if kind == "click":
        return Click(
            event_id=event_id,
            user_id=user_id,
            ts=ts,
            item_id=_ident(obj, "item_id", limits),
            category=_category(obj, limits),
            price=_optional_price(obj, "price", limits),
            session_id=session_id,
        )
    if kind == "cart":
        action = obj["action"]
        if not isinstance(action, str):
            raise Rejected("bad_type", "action must be a string")
        if action not in ("add", "remove"):
            raise Rejected("bad_value", f"action must be 'add' or 'remove', got {action[:32]!r}")
        return CartChange(
            event_id=event_id,
            user_id=user_id,
            ts=ts,
            item_id=_ident(obj, "item_id", limits),
            action=action,  # type: ignore[arg-type]
            category=_category(obj, limits),
            price=_optional_price(obj, "price", limits),
            quantity=_quantity(obj, limits),
            session_id=session_id,
        )
    items = obj["items"]
    if not isinstance(items, list):
        raise Rejected("bad_type", "items must be a list")
    if not items:
        raise Rejected("bad_value", "an order needs at least one item")
    if len(items) > limits.max_items:
        raise Rejected("out_of_bounds", f"{len(items)} items > {limits.max_items}")
    lines = tuple(_order_line(item, limits) for item in items)
    total = obj.get("total")
    bound = limits.max_price * limits.max_items
    if total is None:
        # Bounded like an explicit total: 200 lines of 1,000 x 100,000 would otherwise be 2e10.
        total = round(sum(line.price * line.quantity for line in lines), 2)
        if total > bound:
            raise Rejected("out_of_bounds", f"computed total {total:g} > {bound:g}")
    else:
        total = _number(total, "total", bound)
    return Order(
        event_id=event_id,
        user_id=user_id,
        ts=ts,
        order_id=_ident(obj, "order_id", limits),
        items=lines,
        total=float(total),
        session_id=session_id,
    )


def decode_clock(raw: bytes | None, *, now_ms: int | None, limits: Limits) -> int:
    """The event time a ``clock`` message announces, or ``Rejected``.

    The same timestamp rules as an event's ``ts`` (``parse_ts``, ``min_ts_ms``, at most
    ``max_future_ms`` ahead of the worker's wall clock ``now_ms``), within ``max_payload_bytes``,
    and the value must be a JSON object with a ``ts``: the clock only ever moves forward and is
    stored, so a tick in 2100 could never be taken back.

    >>> decode_clock(b'{"ts": 1767225600000, "source": "replay"}', now_ms=None, limits=Limits())
    1767225600000
    """
    obj = _json_object(raw, limits)
    if obj.get("ts") is None:
        raise Rejected("missing_field", "a clock message needs 'ts'")
    return _checked_ts(obj["ts"], now_ms, limits)


def _checked_ts(value: Any, now_ms: int | None, limits: Limits) -> int:
    """``parse_ts`` within ``[min_ts_ms, now_ms + max_future_ms]``."""
    ts = parse_ts(value)
    if ts < limits.min_ts_ms:
        hint = " (epoch seconds? ts must be milliseconds)" if ts > 0 else ""
        raise Rejected("ts_out_of_range", f"ts {ts} is before {limits.min_ts_ms}{hint}")
    if now_ms is not None and ts > now_ms + limits.max_future_ms:
        raise Rejected("future_timestamp", f"ts {ts} is {ts - now_ms} ms in the future")
    return ts


#: The largest plausible epoch-ms magnitude (year ~33,700): beyond it a number is corrupt.
_MAX_EPOCH_MS = 10**15


def parse_ts(value: Any) -> int:
    """Epoch milliseconds from an int/float, a string of ASCII digits, or an ISO-8601 string.

    A naive ISO time is taken as UTC. Anything else raises ``Rejected`` (never another
    exception): ``"²"`` or ``"١٢٣"`` are digits to ``str.isdigit`` but not to ``int``.

    >>> parse_ts(1767225600000), parse_ts("2026-01-01T00:00:00Z"), parse_ts("2026-01-01 01:00+01:00")
    (1767225600000, 1767225600000, 1767225600000)
    """
    if isinstance(value, bool):
        raise Rejected("bad_type", "ts must be a number or a string, not a boolean")
    if isinstance(value, int):
        if abs(value) > _MAX_EPOCH_MS:
            raise Rejected("bad_timestamp", f"ts {_show(value)} is not a plausible epoch-ms value")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > _MAX_EPOCH_MS:
            raise Rejected("bad_timestamp", f"ts {value!r} is not a plausible epoch-ms value")
        return round(value)
    if not isinstance(value, str):
        raise Rejected("bad_type", f"ts must be a number or a string, got {type(value).__name__}")
    text = value.strip()
    if len(text) > 64:
        raise Rejected("bad_timestamp", "ts string too long")
    if text.isascii() and text.isdigit():
        if len(text) > 15:
            raise Rejected("bad_timestamp", f"ts {text!r} is not a plausible epoch-ms value")
        return int(text)
    if not text.isascii():
        # ISO-8601 is ASCII (fromisoformat takes any character as the date-time separator).
        raise Rejected("bad_timestamp", f"unparseable ts {text[:40]!r}")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return round(parsed.timestamp() * 1000)
    except (ValueError, OverflowError):
        raise Rejected("bad_timestamp", f"unparseable ts {text[:40]!r}") from None


def _ident(obj: Mapping[str, Any], name: str, limits: Limits) -> str:
    value = obj.get(name)
    if (
        type(value) is str
        and value.isascii()
        and 0 < len(value) <= limits.max_string
        and not value.isspace()
    ):
        return value  # the common case, settled without the checks below
    if value is None:
        raise Rejected("missing_field", f"{name!r} is required")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Rejected("bad_type", f"{name} must be a string or an integer")
    if isinstance(value, int):
        # JSON ids are 64-bit at most (orjson reads bigger integers as floats); a Python int of
        # thousands of digits would not even convert to a string.
        if not -(2**63) <= value < 2**64:
            raise Rejected("out_of_bounds", f"{name} is an integer beyond 64 bits")
        return str(value)
    if not value.strip():
        raise Rejected("bad_value", f"{name} is empty")
    if len(value) > limits.max_string:
        raise Rejected("out_of_bounds", f"{name} longer than {limits.max_string} characters")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:  # a lone surrogate (only from objects not read by orjson)
            raise Rejected("bad_value", f"{name} is not valid Unicode") from None
    return value


def _optional_ident(obj: Mapping[str, Any], name: str, limits: Limits) -> str | None:
    return None if obj.get(name) is None else _ident(obj, name, limits)


def _category(obj: Mapping[str, Any], limits: Limits) -> str:
    value = obj.get("category")
    if value is None or value == "":
        return UNKNOWN_CATEGORY
    return _ident(obj, "category", limits)


def _number(value: Any, name: str, bound: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected("bad_type", f"{name} must be a number, got {type(value).__name__}")
    # (math.isfinite of a huge int overflows: ints are compared, never converted, first.)
    if isinstance(value, float) and not math.isfinite(value):
        raise Rejected("bad_value", f"{name} is not finite")
    if value < 0:
        raise Rejected("negative_value", f"{name} {_show(value)} is negative")
    if value > bound:
        raise Rejected("out_of_bounds", f"{name} {_show(value)} > {bound:g}")
    return float(value)


def _show(value: float) -> str:
    """A number for a rejection detail: a huge Python int has no affordable (or allowed) str."""
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return f"<{value.bit_length()}-bit integer>"
    return repr(value)


def _optional_price(obj: Mapping[str, Any], name: str, limits: Limits) -> float | None:
    value = obj.get(name)
    return None if value is None else _number(value, name, limits.max_price)


def _quantity(obj: Mapping[str, Any], limits: Limits) -> int:
    value = obj.get("quantity")
    if value is None:
        return 1
    number = _number(value, "quantity", limits.max_quantity)
    if number != int(number):
        raise Rejected("bad_value", f"quantity {value} is not a whole number")
    if number < 1:
        raise Rejected("out_of_bounds", "quantity must be at least 1")
    return int(number)


def _order_line(item: Any, limits: Limits) -> OrderLine:
    if not isinstance(item, dict):
        raise Rejected("bad_type", "each order item must be an object")
    for name in ("item_id", "price"):
        if item.get(name) is None:
            raise Rejected("missing_field", f"order item needs {name!r}")
    return OrderLine(
        item_id=_ident(item, "item_id", limits),
        price=_number(item["price"], "item price", limits.max_price),
        quantity=_quantity(item, limits),
        category=_category(item, limits),
    )
