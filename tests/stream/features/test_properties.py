"""Property-based tests of the pure feature core (hypothesis)."""

from __future__ import annotations

import math
import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.contract.events import CartChange, Click, Order, OrderLine
from stream.features import (
    FEATURE_NAMES,
    FeatureConfig,
    UserState,
    apply_event,
    decode_state,
    encode_state,
    feature_vector,
)
from stream.features.schema import WINDOWS

T0 = 1_767_225_600_000
CONFIG = FeatureConfig(allowed_lateness_ms=3_600_000)

categories = st.sampled_from(["books", "toys", "home", "unknown"])
items = st.sampled_from([f"i{i}" for i in range(6)])
prices = st.one_of(st.none(), st.floats(0, 500).map(lambda p: round(p, 2)))


@st.composite
def events(draw, max_size: int = 25, spread_ms: int = 3 * 86_400_000):
    n = draw(st.integers(1, max_size))
    out = []
    for i in range(n):
        ts = T0 + draw(st.integers(0, spread_ms))
        kind = draw(st.sampled_from(["click", "click", "add", "remove", "order"]))
        eid = f"e{i}"
        if kind == "click":
            out.append(Click(eid, "u", ts, draw(items), draw(categories), draw(prices)))
        elif kind in ("add", "remove"):
            action = "add" if kind == "add" else "remove"
            out.append(
                CartChange(
                    eid,
                    "u",
                    ts,
                    draw(items),
                    action,
                    draw(categories),
                    draw(prices),
                    draw(st.integers(1, 3)),
                )
            )
        else:
            lines = tuple(
                OrderLine(
                    draw(items),
                    draw(st.floats(0, 300).map(lambda p: round(p, 2))),
                    draw(st.integers(1, 2)),
                    draw(categories),
                )
                for _ in range(draw(st.integers(1, 3)))
            )
            total = round(sum(line.price * line.quantity for line in lines), 2)
            out.append(Order(eid, "u", ts, f"o{i}", lines, total))
    return out


def fold(evts, config=CONFIG) -> UserState:
    state = UserState("u")
    for event in evts:
        apply_event(state, event, config)
    return state


def in_order(evts):
    return sorted(evts, key=lambda e: (e.ts, e.event_id))


@settings(max_examples=200, deadline=None)
@given(events(), st.integers(0, 10 * 86_400_000))
def test_windows_equal_a_brute_force_recomputation(evts, later) -> None:
    state = fold(in_order(evts))
    at = max(e.ts for e in evts) + later
    vector = dict(zip(FEATURE_NAMES, feature_vector(state, at, CONFIG), strict=True))
    for window, tau in WINDOWS.items():

        def decayed(selected, weight=lambda e: 1.0, tau=tau):
            return sum(weight(e) * math.exp(-(at - e.ts) / tau) for e in selected)

        clicks = [e for e in evts if isinstance(e, Click)]
        adds = [e for e in evts if isinstance(e, CartChange) and e.action == "add"]
        orders = [e for e in evts if isinstance(e, Order)]
        for name, expected in (
            (f"clicks_{window}", decayed(clicks)),
            (f"cart_adds_{window}", decayed(adds)),
            (f"orders_{window}", decayed(orders)),
            (f"spend_{window}", decayed(orders, lambda e: e.total)),
        ):
            assert math.isclose(vector[name], expected, rel_tol=1e-9, abs_tol=1e-9), name
    assert vector["clicks_total"] == sum(isinstance(e, Click) for e in evts)
    last_order = max((e.ts for e in evts if isinstance(e, Order)), default=None)
    if last_order is not None:
        assert math.isclose(vector["hours_since_order"], (at - last_order) / 3_600_000)
    assert math.isclose(vector["tenure_days"], (at - min(e.ts for e in evts)) / 86_400_000)


@settings(max_examples=200, deadline=None)
@given(events(spread_ms=2 * 3_600_000), st.randoms(use_true_random=False))
def test_any_permutation_within_the_allowed_lateness_gives_the_same_state(evts, rnd) -> None:
    reference = fold(in_order(evts))
    shuffled = list(evts)
    rnd.shuffle(shuffled)
    # Keep only arrival orders in which no event is later than the allowed lateness.
    newest = None
    arrival = []
    for event in shuffled:
        if newest is not None and event.ts < newest - CONFIG.allowed_lateness_ms:
            continue
        arrival.append(event)
        newest = event.ts if newest is None else max(newest, event.ts)
    if len(arrival) != len(evts):
        reference = fold(in_order(arrival))
    state = fold(arrival)
    assert state == reference
    at = max(e.ts for e in evts) + 1
    assert feature_vector(state, at, CONFIG) == feature_vector(reference, at, CONFIG)


@settings(max_examples=200, deadline=None)
@given(events())
def test_applying_an_event_twice_equals_applying_it_once(evts) -> None:
    once = fold(in_order(evts))
    twice = UserState("u")
    for event in in_order(evts):
        apply_event(twice, event, CONFIG)
        apply_event(twice, event, CONFIG)
    twice.duplicates = once.duplicates
    assert twice == once


@settings(max_examples=100, deadline=None)
@given(events())
def test_contract_encode_pickle_and_input_not_mutated(evts) -> None:
    snapshot = [pickle.dumps(e) for e in evts]
    state = fold(evts)
    assert [pickle.dumps(e) for e in evts] == snapshot  # events are not mutated
    assert decode_state(encode_state(state)) == state
    assert pickle.loads(pickle.dumps(state)) == state
    at = max(e.ts for e in evts) + 5
    again = fold(evts)
    assert feature_vector(state, at, CONFIG) == feature_vector(again, at, CONFIG)  # deterministic
    decoded = decode_state(encode_state(state))
    assert feature_vector(decoded, at, CONFIG) == feature_vector(state, at, CONFIG)
    assert all(math.isfinite(v) for v in feature_vector(state, at, CONFIG))


def test_feature_core_imports_no_faust() -> None:
    import subprocess
    import sys

    code = (
        "import sys, stream.features, stream.contract.validation, offline_train.replay;"
        "print('faust' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _rebuilt(state: UserState):
    view = state.base.copy()
    for event in state.tail:
        view.apply(event, CONFIG.profile)
    return view


@settings(max_examples=200, deadline=None)
@given(
    events(max_size=40, spread_ms=2 * 3_600_000),
    st.randoms(use_true_random=False),
    st.integers(0, 3),
)
def test_the_cached_view_and_its_mark_equal_a_rebuild_after_every_event(evts, rnd, swaps) -> None:
    # Mostly in order with a few events a little out of order (live traffic across topics),
    # read after every event: the view extended, rebuilt from the mark or from base is
    # exactly what a rebuild from base through the tail gives.
    arrival = in_order(evts)
    for _ in range(swaps * 4):
        i = rnd.randrange(len(arrival))
        j = min(len(arrival) - 1, i + rnd.randrange(1, 12))
        arrival[i], arrival[j] = arrival[j], arrival[i]
    state = UserState("u")
    for event in arrival:
        apply_event(state, event, CONFIG)
        at = (state.max_ts or T0) + 1
        assert feature_vector(state, at, CONFIG) == _rebuilt(state).vector(at, CONFIG.profile)
        assert state.view == _rebuilt(state)
        if state.mark is not None:
            n, profile = state.mark
            expected = state.base.copy()
            for e in state.tail[:n]:
                expected.apply(e, CONFIG.profile)
            assert profile == expected
