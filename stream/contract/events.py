"""Cleaned input events: the wire contract of ``clicks``, ``carts`` and ``orders`` after validation.

These are plain slotted dataclasses rather than ``faust.Record`` so that the feature core and
offline training use them without importing Faust (design principle 1). ``stream.contract.validation``
is the only way to build them from bytes, so every instance has passed the cleaning rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "INPUT_TOPICS",
    "KIND_OF_TOPIC",
    "TOPIC_OF_KIND",
    "UNKNOWN_CATEGORY",
    "CartChange",
    "Click",
    "Event",
    "Kind",
    "Order",
    "OrderLine",
    "to_wire",
]

Kind = Literal["click", "cart", "order"]

#: Contract topic of each event kind, and back; a replay log's ``type`` field is the kind.
TOPIC_OF_KIND: dict[str, str] = {"click": "clicks", "cart": "carts", "order": "orders"}
KIND_OF_TOPIC: dict[str, str] = {topic: kind for kind, topic in TOPIC_OF_KIND.items()}
INPUT_TOPICS: tuple[str, ...] = tuple(TOPIC_OF_KIND.values())

#: Filled in when an event carries no category, so categories are never None downstream.
UNKNOWN_CATEGORY = "unknown"


@dataclass(frozen=True, slots=True)
class Click:
    """A product view. ``price`` is None when the shop did not send one (imputed by features)."""

    event_id: str
    user_id: str
    ts: int
    item_id: str
    category: str = UNKNOWN_CATEGORY
    price: float | None = None
    session_id: str | None = None

    kind = "click"


@dataclass(frozen=True, slots=True)
class CartChange:
    """An item added to or removed from the cart."""

    event_id: str
    user_id: str
    ts: int
    item_id: str
    action: Literal["add", "remove"]
    category: str = UNKNOWN_CATEGORY
    price: float | None = None
    quantity: int = 1
    session_id: str | None = None

    kind = "cart"


@dataclass(frozen=True, slots=True)
class OrderLine:
    """One line of an order."""

    item_id: str
    price: float
    quantity: int = 1
    category: str = UNKNOWN_CATEGORY


@dataclass(frozen=True, slots=True)
class Order:
    """A placed order; ``total`` is the shop's figure, else the sum of its lines."""

    event_id: str
    user_id: str
    ts: int
    order_id: str
    items: tuple[OrderLine, ...]
    total: float
    session_id: str | None = None

    kind = "order"


Event = Click | CartChange | Order


def to_wire(event: Event) -> dict[str, object]:
    """The JSON object a shop sends for ``event``: decoding it (``stream.contract.validation``) gives
    ``event`` back. Offline evaluation feeds clean events through the worker's pipeline this
    way, so it runs the worker's cleaning too.

    >>> to_wire(Click("e1", "u1", 1767225600000, "i1", "books", 9.5))
    {'event_id': 'e1', 'user_id': 'u1', 'ts': 1767225600000, 'item_id': 'i1', 'category': 'books', 'price': 9.5}
    """
    wire: dict[str, object] = {"event_id": event.event_id, "user_id": event.user_id, "ts": event.ts}
    if isinstance(event, Order):
        wire["order_id"] = event.order_id
        wire["items"] = [
            {
                "item_id": line.item_id,
                "price": line.price,
                "quantity": line.quantity,
                "category": line.category,
            }
            for line in event.items
        ]
        wire["total"] = event.total
    else:
        wire["item_id"] = event.item_id
        if isinstance(event, CartChange):
            wire["action"] = event.action
            wire["quantity"] = event.quantity
        wire["category"] = event.category
        if event.price is not None:
            wire["price"] = event.price
    if event.session_id is not None:
        wire["session_id"] = event.session_id
    return wire
