"""ItemPopularity (issue 10, case 6): an item whose category changes, an item only clicked in a
category nobody added to yet, order lines without a category, decades of event time.

Before the fix, an item clicked as ``books`` on a partition with no ``books`` cart adds and then
ordered without a category (or added under another one) raised ``KeyError`` in
``_category_scaled``, and every user of the batch lost their scores.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.contract.events import UNKNOWN_CATEGORY, CartChange, Click, Event, Order, OrderLine
from stream.models.popularity import ItemPopularity
from stream.settings import Limits

T0 = 1_767_225_600_000
DAY = 86_400_000
YEAR = 365 * DAY


def _click(item: str, category: str, ts: int = T0) -> Click:
    return Click(f"c-{item}-{ts}", "u1", ts, item, category)


def _add(item: str, category: str, ts: int = T0, quantity: int = 1) -> CartChange:
    return CartChange(f"a-{item}-{ts}", "u1", ts, item, "add", category, quantity=quantity)


def _order(*lines: OrderLine, ts: int = T0) -> Order:
    return Order(f"o-{ts}", "u1", ts, f"o{ts}", tuple(lines), 1.0)


def test_an_order_line_without_category_for_an_item_only_clicked_counts_under_its_category():
    pop = ItemPopularity()
    pop.observe(_click("x", "books"))  # no cart add of "books" anywhere yet
    pop.observe(_order(OrderLine("x", 10.0, 2), ts=T0 + 1000))  # KeyError before the fix
    assert pop.category_of("x") == "books"
    assert pop.score("x") == 2.0
    assert pop.category_total("books") == 2.0
    assert pop.top(5, category="books") == ["x"]
    assert pop.top(5, category=UNKNOWN_CATEGORY) == []


def test_an_item_only_clicked_in_one_category_then_added_under_another_moves_there():
    pop = ItemPopularity()
    pop.observe(_add("other", "toys"))
    pop.observe(_click("x", "books"))
    pop.observe(_add("x", "music", T0 + 1000))  # KeyError before the fix
    pop.observe(_order(OrderLine("x", 3.0, 1, "garden"), ts=T0 + 2000))
    assert pop.category_of("x") == "garden"
    assert pop.top(5, category="garden") == ["x"]
    assert pop.top(5, category="music") == [] and pop.top(5, category="books") == []
    assert math.isclose(pop.category_total("garden"), pop.score("x"))
    assert math.isclose(pop.score("x"), 2.0, rel_tol=1e-5)
    assert pop.category_total("music") == 1e-12  # the floor: nothing left there
    assert pop.top(5) == ["x", "other"]


def test_a_moved_item_carries_its_count_and_leaves_its_old_category_exact():
    pop = ItemPopularity()
    pop.observe(_add("x", "books", quantity=2))
    pop.observe(_add("y", "books"))
    assert pop.top(5, category="books") == ["x", "y"]  # heads built, then kept up to date
    pop.observe(_add("x", "music", T0 + 1))
    assert pop.top(5, category="books") == ["y"]
    assert pop.top(5, category="music") == ["x"]
    assert math.isclose(pop.category_total("books"), pop.score("y"))
    assert math.isclose(pop.category_total("music"), pop.score("x"))
    pop.observe(_add("y", "music", T0 + 2))  # the last item leaves: nothing, not a residue
    assert pop.category_total("books") == 1e-12
    assert pop.top(5, category="music") == ["x", "y"]


def test_unknown_never_replaces_a_known_category_and_a_real_one_replaces_unknown():
    pop = ItemPopularity()
    pop.observe(_order(OrderLine("x", 3.0, 1), ts=T0))  # first seen without a category
    assert pop.category_of("x") == UNKNOWN_CATEGORY
    pop.observe(_click("x", "books", T0 + 1))  # a click names it: the count moves along
    assert pop.category_of("x") == "books"
    assert pop.top(5, category="books") == ["x"] and pop.top(5, category=UNKNOWN_CATEGORY) == []
    pop.observe(_add("x", UNKNOWN_CATEGORY, T0 + 2))
    pop.observe(CartChange("r", "u1", T0 + 3, "x", "remove", UNKNOWN_CATEGORY))
    assert pop.category_of("x") == "books"
    assert math.isclose(pop.category_total("books"), pop.score("x"))
    assert math.isclose(pop.score("x"), 2.0, rel_tol=1e-6)  # two counts, 2 ms of decay
    pop.observe(_click("x", "music", T0 + 4))  # a click never moves a known category
    assert pop.category_of("x") == "books"


def test_decades_of_event_time_rebase_instead_of_overflowing_and_forget_dead_items():
    pop = ItemPopularity()
    oldest = Limits().min_ts_ms  # the oldest valid ts (1971)
    pop.observe(_add("old", "books", oldest))
    pop.observe(_add("new", "books", oldest + 56 * YEAR))  # OverflowError before the fix
    assert pop.score("new") == 1.0
    assert pop.score("old") == 0.0  # thousands of half-lives: forgotten
    assert pop.top(5) == ["new"] and pop.top(5, category="books") == ["new"]
    assert pop.category_total("books") == 1.0
    pop.observe(_add("old", "books", oldest))  # far older than the scale: counts nothing
    assert pop.top(5) == ["new"]


def test_a_rebase_keeps_rankings_and_totals():
    pop = ItemPopularity(half_life_ms=DAY)
    pop.observe(_add("a", "books", T0, quantity=3))  # scaled 3
    pop.observe(_add("b", "books", T0 + DAY))  # scaled 2
    pop.observe(_add("c", "toys", T0 + 2 * DAY))  # scaled 4
    assert pop.top(5) == ["c", "a", "b"] and pop.top(5, category="books") == ["a", "b"]
    pop.observe(_add("d", "toys", T0 + 41 * DAY))  # 2 ** 41 > 2 ** 40: rebased first
    assert pop.top(5) == ["d", "c", "a", "b"]
    assert pop.top(5, category="books") == ["a", "b"]
    assert math.isclose(pop.score("c"), 2.0**-39)
    assert math.isclose(pop.category_total("toys"), 1.0 + 2.0**-39)
    assert math.isclose(pop.category_total("books"), 5 * 2.0**-41)


# -- property: whatever the events, observe never raises and the books stay consistent -------

_ITEMS = ["i1", "i2", "i3", "i4"]
_CATEGORIES = ["books", "music", UNKNOWN_CATEGORY]


@st.composite
def _events(draw: st.DrawFn) -> list[Event]:
    ts = T0
    out: list[Event] = []
    for n in range(draw(st.integers(1, 40))):
        ts += draw(st.sampled_from([0, 1, 1000, DAY, 45 * 7 * DAY, -DAY]))
        item, category = draw(st.sampled_from(_ITEMS)), draw(st.sampled_from(_CATEGORIES))
        kind = draw(st.sampled_from(["click", "add", "remove", "order"]))
        if kind == "click":
            out.append(Click(f"e{n}", "u", ts, item, category))
        elif kind in ("add", "remove"):
            quantity = draw(st.integers(1, 3))
            out.append(CartChange(f"e{n}", "u", ts, item, kind, category, quantity=quantity))
        else:
            lines = draw(
                st.lists(
                    st.tuples(st.sampled_from(_ITEMS), st.sampled_from(_CATEGORIES)),
                    min_size=1,
                    max_size=3,
                )
            )
            out.append(
                Order(
                    f"e{n}", "u", ts, f"o{n}", tuple(OrderLine(i, 1.0, 1, c) for i, c in lines), 3
                )
            )
    return out


@settings(max_examples=300, deadline=None)
@given(_events())
def test_observe_never_raises_and_categories_totals_and_tops_agree(events: list[Event]) -> None:
    pop = ItemPopularity()
    for event in events:
        pop.observe(event)
        pop.top(2)  # build heads mid-stream, so their upkeep is exercised too
        pop.top(2, category="books")
    scores = {i: pop.score(i) for i in _ITEMS}
    for category in _CATEGORIES:
        members = [i for i in _ITEMS if pop.category_of(i) == category and scores[i] > 0]
        total = sum(scores[i] for i in members)
        assert math.isclose(pop.category_total(category), max(total, 1e-12), rel_tol=1e-9)
        expected = sorted(members, key=lambda i: (-scores[i], i))
        assert pop.top(4, category=category) == expected
    ranked = sorted((i for i in _ITEMS if scores[i] > 0), key=lambda i: (-scores[i], i))
    assert pop.top(4) == ranked
