"""Each cleaning rule of the "Cleaning rules" table (docs/contracts.md), one case at a time."""

from __future__ import annotations

import orjson
import pytest

from stream.contract.events import CartChange, Click, Order
from stream.contract.validation import REASONS, decode_event, parse_ts
from stream.errors import Rejected
from stream.settings import Limits

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
LIMITS = Limits()

CLICK = {"event_id": "e1", "user_id": "u1", "ts": NOW - 1000, "item_id": "i1"}
CART = {**CLICK, "action": "add"}
ORDER = {
    "event_id": "e2",
    "user_id": "u1",
    "ts": NOW - 1000,
    "order_id": "o1",
    "items": [{"item_id": "i1", "price": 10.0, "quantity": 2}, {"item_id": "i2", "price": 5.5}],
}


def decode(kind: str, obj: object) -> object:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return decode_event(kind, raw, now_ms=NOW, limits=LIMITS)


def reason(kind: str, obj: object) -> str:
    with pytest.raises(Rejected) as info:
        decode(kind, obj)
    assert info.value.reason in REASONS
    return info.value.reason


def test_valid_events_of_each_kind_get_their_defaults() -> None:
    click = decode("click", CLICK)
    assert click == Click("e1", "u1", NOW - 1000, "i1", "unknown", None, None)
    cart = decode("cart", CART)
    assert isinstance(cart, CartChange) and cart.quantity == 1 and cart.category == "unknown"
    order = decode("order", ORDER)
    assert isinstance(order, Order)
    assert order.total == 25.5  # from the items when absent
    assert [line.quantity for line in order.items] == [2, 1]
    assert order.items[0].category == "unknown"


def test_shop_total_is_kept_when_given() -> None:
    assert decode("order", {**ORDER, "total": 21.0}).total == 21.0


def test_integer_ids_become_strings() -> None:
    assert decode("click", {**CLICK, "user_id": 42, "item_id": 7}).user_id == "42"


@pytest.mark.parametrize(
    ("kind", "obj", "expected"),
    [
        ("click", b"{not json", "not_json"),
        ("click", b"\xff\xfe", "not_json"),
        ("click", b'{"ts": NaN}', "not_json"),
        ("click", b"[1, 2]", "not_object"),
        ("click", {k: v for k, v in CLICK.items() if k != "item_id"}, "missing_field"),
        ("click", {**CLICK, "user_id": None}, "missing_field"),
        ("cart", {k: v for k, v in CART.items() if k != "action"}, "missing_field"),
        ("order", {k: v for k, v in ORDER.items() if k != "items"}, "missing_field"),
        ("order", {**ORDER, "items": [{"item_id": "i1"}]}, "missing_field"),
        ("click", {**CLICK, "ts": "yesterday"}, "bad_timestamp"),
        ("click", {**CLICK, "ts": 1e300}, "bad_timestamp"),
        ("click", {**CLICK, "ts": True}, "bad_type"),
        ("click", {**CLICK, "ts": [1]}, "bad_type"),
        ("click", {**CLICK, "price": "12.5"}, "bad_type"),
        ("click", {**CLICK, "user_id": {"id": 1}}, "bad_type"),
        ("click", {**CLICK, "item_id": True}, "bad_type"),
        ("order", {**ORDER, "items": "i1"}, "bad_type"),
        ("order", {**ORDER, "items": ["i1"]}, "bad_type"),
        ("cart", {**CART, "action": 1}, "bad_type"),
        ("cart", {**CART, "quantity": "2"}, "bad_type"),
        ("cart", {**CART, "action": "explode"}, "bad_value"),
        ("click", {**CLICK, "user_id": "  "}, "bad_value"),
        ("order", {**ORDER, "items": []}, "bad_value"),
        ("cart", {**CART, "quantity": 1.5}, "bad_value"),
        ("click", {**CLICK, "price": -1}, "negative_value"),
        ("cart", {**CART, "quantity": -3}, "negative_value"),
        ("order", {**ORDER, "total": -5}, "negative_value"),
        ("click", {**CLICK, "price": 1e9}, "out_of_bounds"),
        ("cart", {**CART, "quantity": 10**7}, "out_of_bounds"),
        ("cart", {**CART, "quantity": 0}, "out_of_bounds"),
        ("click", {**CLICK, "item_id": "x" * 1000}, "out_of_bounds"),
        ("order", {**ORDER, "items": [{"item_id": "i", "price": 1}] * 500}, "out_of_bounds"),
        ("click", {**CLICK, "ts": NOW + 10 * 86_400_000}, "future_timestamp"),
        ("click", {**CLICK, "ts": 1_700_000_000}, "ts_out_of_range"),
        ("click", b'{"a": "' + b"x" * 70_000 + b'"}', "too_large"),
    ],
)
def test_each_rule_rejects_with_its_reason(kind: str, obj: object, expected: str) -> None:
    assert reason(kind, obj) == expected


def test_seconds_instead_of_milliseconds_gets_a_hint() -> None:
    with pytest.raises(Rejected, match="epoch seconds"):
        decode("click", {**CLICK, "ts": 1_700_000_000})


def test_future_check_is_skipped_without_a_clock() -> None:
    event = decode_event(
        "click", orjson.dumps({**CLICK, "ts": NOW * 2}), now_ms=None, limits=LIMITS
    )
    assert event.ts == NOW * 2


def test_bounds_come_from_settings() -> None:
    strict = Limits(max_price=5.0)
    with pytest.raises(Rejected, match="out_of_bounds"):
        decode_event("click", orjson.dumps({**CLICK, "price": 6}), now_ms=NOW, limits=strict)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1767225600000, NOW),
        (1767225600000.4, NOW),
        ("1767225600000", NOW),
        ("2026-01-01T00:00:00Z", NOW),
        ("2026-01-01T00:00:00.000+00:00", NOW),
        ("2026-01-01T01:00:00+01:00", NOW),
        ("2026-01-01T00:00:00", NOW),  # naive is UTC
    ],
)
def test_timestamp_forms(text: object, expected: int) -> None:
    assert parse_ts(text) == expected


def test_decoding_does_not_mutate_or_depend_on_key_order() -> None:
    obj = dict(reversed(list(ORDER.items())))
    snapshot = orjson.dumps(obj)
    assert decode("order", obj) == decode("order", ORDER)
    assert orjson.dumps(obj) == snapshot
