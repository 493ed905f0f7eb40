"""CoOccurrence: decayed pair weights, exclusions, bounded memory, compact round trip."""

from __future__ import annotations

import pickle

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.scoring.cooccurrence import CoOccurrence

DAY = 86_400_000
HL = 14 * DAY


def test_weights_halve_every_half_life():
    co = CoOccurrence()
    co.update(["a", "b"], ts=0)
    assert co.candidates(["a"], 1, now_ms=0, exclude=set()) == [("b", 1.0)]
    assert co.candidates(["a"], 1, now_ms=HL, exclude=set(), available_within_ms=HL) == [("b", 0.5)]
    co.update(["a", "b"], ts=HL)
    assert co.candidates(["a"], 1, now_ms=HL, exclude=set()) == [("b", 1.5)]


def test_scores_sum_over_the_cart_and_exclude_cart_items():
    co = CoOccurrence()
    co.update(["a", "x"], ts=0)
    co.update(["b", "x"], ts=0)
    co.update(["a", "y"], ts=0)
    co.update(["a", "b"], ts=0)
    got = co.candidates(["a", "b"], 5, now_ms=0, exclude=set())
    assert got == [("x", 2.0), ("y", 1.0)]
    assert co.candidates(["a", "b"], 5, now_ms=0, exclude={"x"}) == [("y", 1.0)]
    assert co.candidates(["a", "b"], 1, now_ms=0, exclude=set()) == [("x", 2.0)]
    assert co.candidates(["a"], 0, now_ms=0, exclude=set()) == []
    assert co.candidates(["unknown"], 3, now_ms=0, exclude=set()) == []


def test_items_not_seen_recently_count_as_unavailable():
    co = CoOccurrence()
    co.update(["a", "old"], ts=0)
    co.update(["a", "new"], ts=10 * DAY)
    at = 10 * DAY
    assert [
        i
        for i, _ in co.candidates(["a"], 5, now_ms=at, exclude=set(), available_within_ms=10 * DAY)
    ] == ["new", "old"]
    assert [
        i
        for i, _ in co.candidates(
            ["a"], 5, now_ms=at, exclude=set(), available_within_ms=10 * DAY - 1
        )
    ] == ["new"]
    assert co.last_seen("old") == 0 and co.last_seen("new") == 10 * DAY


def test_added_counts_only_the_new_pairs():
    co = CoOccurrence()
    co.update(["a", "b"], ts=0, added=["b"])
    co.update(["a", "b", "c"], ts=0, added=["c"])
    assert dict(co.candidates(["a"], 5, now_ms=0, exclude=set())) == {"b": 1.0, "c": 1.0}
    assert dict(co.candidates(["c"], 5, now_ms=0, exclude=set())) == {"a": 1.0, "b": 1.0}
    assert dict(co.popular(5, 0)) == {"b": 1.0, "c": 1.0}  # "a" was never the new item
    co.update(["a", "b", "c"], ts=0)  # no ``added``: every pair and item counts
    assert dict(co.candidates(["a"], 5, now_ms=0, exclude=set())) == {"b": 2.0, "c": 2.0}


def test_duplicates_and_empty_baskets():
    co = CoOccurrence()
    co.update([], ts=0)
    co.update(["a", "a"], ts=0)
    assert co.candidates(["a"], 3, now_ms=0, exclude=set()) == []
    assert co.popular(3, 0) == [("a", 1.0)]


def test_the_weakest_neighbour_is_dropped():
    co = CoOccurrence(max_neighbours=2)
    for _ in range(3):
        co.update(["a", "b"], ts=0)
    for _ in range(2):
        co.update(["a", "c"], ts=0)
    co.update(["a", "d"], ts=0)
    assert dict(co.candidates(["a"], 5, now_ms=0, exclude=set())) == {"b": 3.0, "c": 2.0}
    co.update(["a", "d"], ts=3 * HL)  # old pairs have decayed below a fresh one
    assert [
        i
        for i, _ in co.candidates(
            ["a"], 5, now_ms=3 * HL, exclude=set(), available_within_ms=4 * HL
        )
    ] == ["d", "b"]


def test_the_least_recently_seen_item_is_dropped():
    co = CoOccurrence(max_items=3)
    co.update(["a", "b"], ts=0)
    co.update(["c"], ts=1)
    co.update(["a"], ts=2)
    co.update(["d"], ts=3)  # evicts "b", the least recently seen
    assert co.last_seen("b") is None and len(co) == 3
    assert co.candidates(["a"], 5, now_ms=3, exclude=set()) == []
    assert "b" not in dict(co.popular(5, 3))


def test_popular_fallback():
    co = CoOccurrence(top_size=2)
    co.update(["a", "b"], ts=0)
    co.update(["b", "c"], ts=0)
    co.update(["c"], ts=0)
    co.update(["c"], ts=0)
    assert co.popular(5, 0) == [("c", 3.0), ("b", 2.0)]  # the leaderboard keeps 2
    assert co.popular(5, 0, exclude={"c"}) == [("b", 2.0)]
    assert co.popular(1, HL) == [("c", 1.5)]
    assert co.popular(1, 31 * DAY) == []  # nothing seen in 30 days
    assert co.popular(0, 0) == []


def test_rebasing_keeps_scores():
    co = CoOccurrence(half_life_ms=DAY)
    co.update(["a", "b"], ts=0)
    far = 45 * DAY  # 2**45 > the rebase threshold
    co.update(["a", "c"], ts=far)
    got = co.candidates(["a"], 5, now_ms=far, exclude=set(), available_within_ms=far)
    assert got[0] == ("c", 1.0)
    assert got[1][0] == "b" and got[1][1] == pytest.approx(2.0**-45)


def test_to_bytes_is_compact_json_and_checks_the_format():
    co = CoOccurrence(max_neighbours=7)
    co.update(["a", "b"], ts=5)
    raw = co.to_bytes()
    data = orjson.loads(raw)
    assert data[0] == 1 and data[1]["max_neighbours"] == 7
    assert CoOccurrence.from_bytes(raw).max_neighbours == 7
    data[0] = 99
    with pytest.raises(ValueError):
        CoOccurrence.from_bytes(orjson.dumps(data))


items = st.sampled_from([f"i{n}" for n in range(12)])
baskets = st.lists(
    st.tuples(st.lists(items, max_size=6), st.integers(0, 60 * DAY), st.booleans()), max_size=40
)


@settings(max_examples=60, deadline=None)
@given(baskets)
def test_bounds_hold_and_state_round_trips(stream):
    co = CoOccurrence(max_neighbours=3, max_items=6, top_size=4)
    for basket, ts, incremental in sorted(stream, key=lambda b: b[1]):
        co.update(basket, ts, added=basket[-1:] if incremental else None)
        assert len(co) <= 6
        assert all(len(nb) <= 3 for nb in co._nb.values())
        assert set(co._nb) <= set(co._last) and set(co._top) <= set(co._last)
        assert len(co._top) <= 4
    now = max((ts for _b, ts, _i in stream), default=0)
    restored = CoOccurrence.from_bytes(co.to_bytes())
    assert restored.to_bytes() == co.to_bytes()
    unpickled = pickle.loads(pickle.dumps(co))
    for other in (restored, unpickled):
        for cart in (["i0"], ["i1", "i2"], []):
            assert other.candidates(cart, 5, now_ms=now, exclude={"i3"}) == co.candidates(
                cart, 5, now_ms=now, exclude={"i3"}
            )
        assert other.popular(3, now) == co.popular(3, now)
    for cart in (["i0"], ["i1", "i2"]):
        for item, score in co.candidates(cart, 10, now_ms=now, exclude={"i3"}):
            assert item not in cart and item != "i3" and score > 0


@settings(max_examples=60, deadline=None)
@given(baskets)
def test_the_leaderboard_holds_the_most_popular_items(stream):
    """The board remembers its weakest item between updates; it must still be exactly the
    ``top_size`` most popular items (ties by name) whatever the order of updates."""
    co = CoOccurrence(top_size=4)
    for basket, ts, incremental in sorted(stream, key=lambda b: b[1]):
        co.update(basket, ts, added=basket[-1:] if incremental else None)
        ranked = sorted(((v, i) for i, v in co._pop.items() if v > 0), reverse=True)
        assert set(co._top) == {i for _v, i in ranked[:4]}
