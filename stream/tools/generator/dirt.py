"""Dirt: invalid variants of valid events, and copies for duplicates.

It draws from its own random streams, so the valid events do not depend on the dirt settings.
"""

from __future__ import annotations

from typing import Any

from stream.tools.generator.config import DAY
from stream.tools.generator.rand import Rand

__all__ = ["DEFECTS", "copy_event", "make_bad"]

_TEN_YEARS = 3_652 * DAY

#: Kinds of invalid event injected by ``bad_fraction``.
DEFECTS: tuple[str, ...] = (
    "missing_field",
    "unparseable_ts",
    "wrong_type",
    "negative_price",
    "negative_quantity",
    "absurd_quantity",
    "absurd_price",
    "future_ts",
    "bad_action",
)
_REQUIRED = {
    "click": ("user_id", "ts", "item_id"),
    "cart": ("user_id", "ts", "item_id", "action"),
    "order": ("user_id", "ts", "order_id", "items"),
}


def copy_event(event: dict[str, Any]) -> dict[str, Any]:
    copy = dict(event)
    if "items" in copy:
        copy["items"] = [dict(item) for item in copy["items"]]
    return copy


def _as_cart(event: dict[str, Any]) -> dict[str, Any]:
    """A cart-add built from any valid event, for defects that need a cart's fields."""
    if event["type"] == "cart":
        return copy_event(event)
    line = event["items"][0] if event["type"] == "order" else event
    return {
        "type": "cart", "event_id": "", "user_id": event["user_id"], "ts": event["ts"],
        "item_id": line["item_id"], "action": "add", "category": line["category"],
        "price": line["price"], "quantity": line.get("quantity", 1),
        "session_id": event["session_id"],
    }  # fmt: skip


def make_bad(r: Rand, event: dict[str, Any], defect: str) -> tuple[dict[str, Any], str]:
    """An invalid variant of a valid event, and a short description of what is wrong."""
    bad = copy_event(event)
    kind = bad["type"]
    if defect == "missing_field":
        name = _REQUIRED[kind][r.below(len(_REQUIRED[kind]))]
        del bad[name]
        return bad, f"no {name}"
    if defect == "unparseable_ts":
        bad["ts"] = ("yesterday", "not-a-date", "2026-13-45T25:61:00Z", "")[r.below(4)]
        return bad, f"ts {bad['ts']!r}"
    if defect == "wrong_type":
        if kind == "order":
            if r.random() < 0.5:
                bad["items"] = "not-a-list"
                return bad, "items is a string"
            bad["total"] = "lots"
            return bad, "total is a string"
        bad["price"] = "abc"
        return bad, "price is a string"
    if defect == "negative_price":
        if kind == "order":
            bad["items"][0]["price"] = -bad["items"][0]["price"]
            return bad, "negative item price"
        bad["price"] = -bad["price"]
        return bad, "negative price"
    if defect == "absurd_price":
        if kind == "order":
            bad["items"][0]["price"] = 1e9
            return bad, "item price 1e9"
        bad["price"] = 1e9
        return bad, "price 1e9"
    if defect == "future_ts":
        bad["ts"] = bad["ts"] + _TEN_YEARS
        return bad, "ts ten years ahead"
    # The remaining defects need a quantity or an action: clicks become cart adds.
    if defect in ("negative_quantity", "absurd_quantity") and kind == "order":
        qty = -(1 + r.below(5)) if defect == "negative_quantity" else 10**7
        bad["items"][0]["quantity"] = qty
        return bad, f"item quantity {qty}"
    bad = _as_cart(event)
    if defect == "negative_quantity":
        bad["quantity"] = -(1 + r.below(5))
        return bad, f"quantity {bad['quantity']}"
    if defect == "absurd_quantity":
        bad["quantity"] = 10**7
        return bad, "quantity 1e7"
    assert defect == "bad_action", defect
    bad["action"] = "explode"
    return bad, "action 'explode'"
