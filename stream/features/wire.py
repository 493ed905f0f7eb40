"""A user's events in their changelog form (a JSON array per event, ``["c", event_id, ...]``):
what the state's tail stores, and what an event's fingerprint is computed over.

Read back from a changelog anyone with write access to the broker can write to, so
``event_from_wire`` is strict: a well-formed event of the given user, or ``CorruptState``.
"""

from __future__ import annotations

from typing import Any

from stream import strict
from stream.contract.events import CartChange, Click, Event, Order, OrderLine

__all__ = ["event_from_wire", "event_to_wire"]


def event_to_wire(e: Event) -> list[Any]:
    if isinstance(e, Click):
        return ["c", e.event_id, e.user_id, e.ts, e.item_id, e.category, e.price, e.session_id]
    if isinstance(e, CartChange):
        return [
            "k", e.event_id, e.user_id, e.ts, e.item_id, e.action, e.category, e.price,
            e.quantity, e.session_id,
        ]  # fmt: skip
    lines = [[line.item_id, line.price, line.quantity, line.category] for line in e.items]
    return ["o", e.event_id, e.user_id, e.ts, e.order_id, lines, e.total, e.session_id]


def event_from_wire(w: Any, user_id: str) -> Event:
    """A tail event: the common, valid case checked inline (a state holds many), anything else
    by ``_checked_event`` (which says what is wrong)."""
    if type(w) is list and len(w) == 8 and w[0] == "c":
        _c, event_id, uid, ts, item_id, category, price, session_id = w
        if (
            uid == user_id
            and type(ts) is int
            and 0 <= ts <= _MAX_TS
            and type(event_id) is str
            and type(item_id) is str
            and type(category) is str
            and len(event_id) + len(item_id) + len(category) <= _MAX_STRING
            # NaN and infinities fail the comparison; an int is a price too (and stays one).
            and (price is None or (type(price) in _NUMBERS and 0 <= price <= _MAX_NUMBER))
            and (session_id is None or (type(session_id) is str and len(session_id) <= _MAX_STRING))
        ):
            return Click(event_id, user_id, ts, item_id, category, price, session_id)
    return _checked_event(w, user_id)


_MAX_TS, _MAX_STRING, _MAX_NUMBER = strict.MAX_TS, strict.MAX_STRING, strict.MAX_NUMBER
_NUMBERS = (float, int)


def _checked_event(w: Any, user_id: str) -> Event:
    wire = strict.need_list(w, "tail event", max_len=10)
    if not wire:
        raise strict.fail("empty tail event")
    tag = wire[0]
    expected = {"c": 8, "k": 10, "o": 8}.get(tag) if type(tag) is str else None
    if expected is None:
        raise strict.fail(f"unknown tail event tag {str(tag)[:10]!r}")
    if len(wire) != expected:
        raise strict.fail(f"a {tag!r} tail event needs {expected} fields, has {len(wire)}")
    event_id = strict.need_str(wire[1], "event_id")
    if strict.need_str(wire[2], "event user_id") != user_id:
        raise strict.fail("a tail event belongs to another user")
    ts = strict.need_int(wire[3], "event ts", 0, strict.MAX_TS)
    if tag == "c":
        _c, _e, _u, _t, item_id, category, price, session_id = wire
        return Click(
            event_id,
            user_id,
            ts,
            strict.need_str(item_id, "item_id"),
            strict.need_str(category, "category"),
            _opt_price(price, "price"),
            strict.opt_str(session_id, "session_id"),
        )
    if tag == "k":
        _k, _e, _u, _t, item_id, action, category, price, quantity, session_id = wire
        if action not in ("add", "remove"):
            raise strict.fail("a cart event's action is neither 'add' nor 'remove'")
        return CartChange(
            event_id,
            user_id,
            ts,
            strict.need_str(item_id, "item_id"),
            action,
            strict.need_str(category, "category"),
            _opt_price(price, "price"),
            strict.need_int(quantity, "quantity", 1, 2**31),
            strict.opt_str(session_id, "session_id"),
        )
    _o, _e, _u, _t, order_id, lines, total, session_id = wire
    items = []
    for line in strict.need_list(lines, "order lines", max_len=100_000):
        item_id, price, quantity, category = strict.need_list(line, "order line", length=4)
        items.append(
            OrderLine(
                strict.need_str(item_id, "line item_id"),
                strict.need_num(price, "line price", 0.0),
                strict.need_int(quantity, "line quantity", 1, 2**31),
                strict.need_str(category, "line category"),
            )
        )
    if not items:
        raise strict.fail("an order without lines")
    return Order(
        event_id,
        user_id,
        ts,
        strict.need_str(order_id, "order_id"),
        tuple(items),
        strict.need_num(total, "total", 0.0),
        strict.opt_str(session_id, "session_id"),
    )


def _opt_price(value: Any, name: str) -> float | None:
    return None if value is None else strict.need_num(value, name, 0.0)
