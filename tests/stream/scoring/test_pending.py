"""Delayed labels: the exact labels a hand-built event sequence delivers to the learners."""

from __future__ import annotations

import copy

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.scoring.online_churn import ChurnBlend
from stream.scoring.online_interest import InterestBlend
from stream.scoring.pending import (
    PendingChurn,
    PendingInterest,
    PendingOffer,
    add_churn_prediction,
    resolve_churn,
    resolve_interest,
    resolve_offer,
)

H = 3_600_000
DAY = 24 * H
HORIZON = 30 * DAY


class Recording:
    """Wraps a learner and records what ``learn`` received."""

    def __init__(self, learner):
        self.learner = learner
        self.calls: list[tuple] = []

    def learn(self, *args):
        self.calls.append(copy.deepcopy(args))
        return self.learner.learn(*args)

    def __getattr__(self, name):
        return getattr(self.learner, name)


def _candidates(categories: list[str], last: str | None) -> dict[str, dict[str, float]]:
    return {
        c: {"onnx_p": 0.5, "affinity_share": 0.5, "recent_share": 0.0, "is_last": float(c == last)}
        for c in categories
    }


def _drive(events):
    """What a scoring step does per event, in the documented order: reveal labels (an order
    resolves before the new prediction), learn, then predict and keep the prediction pending."""
    churn, interest = Recording(ChurnBlend()), Recording(InterestBlend())
    hits: list[tuple[list[str], str]] = []
    pending_churn: list = []
    pending_interest = None
    for n, (kind, ts, category) in enumerate(events):
        order_ts = ts if kind == "order" else None
        for x, p_onnx, y, btyd, said in resolve_churn(
            pending_churn, order_ts=order_ts, now_ts=ts, horizon_ms=HORIZON
        ):
            assert btyd is None and said is None
            churn.learn(x, p_onnx, y)
        if kind == "clock":
            continue
        label = resolve_interest(pending_interest, category=category, ts=ts)
        if label is not None:
            candidates, ranked, next_category = label
            interest.learn(candidates, next_category)
            interest.record_hit(ranked, next_category)
            hits.append((ranked, next_category))
        x = {"event": float(n)}
        add_churn_prediction(pending_churn, ts, x, churn.predict(x, 0.25))
        if category != "unknown":
            cands = _candidates(["books", "toys", "garden"], category)
            ranked = [c for c, _p in interest.rank(cands, 2)]
            pending_interest = PendingInterest(ts, ranked, cands)
    return churn, interest, hits, pending_churn


def test_hand_built_sequence_delivers_the_exact_labels():
    events = [
        ("click", 0, "books"),  # 0: churn prediction P0 kept
        ("click", 2 * H, "toys"),  # 1: same day, not kept; interest label "toys" for event 0
        ("cart", DAY, "unknown"),  # 2: P2 kept; an unknown category resolves nothing
        ("order", 3 * DAY, "toys"),  # 3: P0, P2 settled "stayed" (they ordered); P3 kept after
        ("click", 40 * DAY, "garden"),  # 4: horizons of P0, P2 (stayed), P3 (churned) passed
        ("order", 70 * DAY, "books"),  # 5: day 70 = P4's horizon end, inclusive: negative
        ("clock", 100 * DAY, None),  # P5's horizon ends exactly now: positive
    ]
    churn, interest, hits, pending = _drive(events)
    assert [(x["event"], p, y) for x, p, y in churn.calls] == [
        (0.0, 0.25, False),
        (2.0, 0.25, False),
        (3.0, 0.25, True),
        (4.0, 0.25, False),
        (5.0, 0.25, True),
    ]
    assert churn.labels_seen == 5 and pending == []
    # The interest label is the next *known* category after each published ranking.
    assert [nxt for _cands, nxt in interest.calls] == ["toys", "toys", "garden", "books"]
    assert [c["is_last"] for c in (cands["toys"] for cands, _ in interest.calls)] == [
        0.0,  # ranked after "books"
        1.0,  # ranked after "toys" (the unknown cart event did not replace it)
        1.0,  # ranked after the "toys" order
        0.0,  # ranked after "garden"
    ]
    assert [nxt for _ranked, nxt in hits] == ["toys", "toys", "garden", "books"]
    assert interest.labels_seen == 4


def test_add_keeps_the_first_prediction_per_period_in_ts_order():
    pending: list = []
    x = {"a": 1.0}
    for ts in (5 * DAY + H, 2 * DAY, 5 * DAY, 2 * DAY + 5 * H, 9 * DAY):
        add_churn_prediction(pending, ts, x, 0.1)
    assert [p.ts for p in pending] == [2 * DAY, 5 * DAY + H, 9 * DAY]
    x["a"] = 2.0  # the pending copy is not the caller's dict
    assert all(p.x == {"a": 1.0} for p in pending)
    add_churn_prediction(pending, 10 * DAY, x, 0.1, max_pending=3)
    assert [p.ts for p in pending] == [5 * DAY + H, 9 * DAY, 10 * DAY]  # oldest dropped
    add_churn_prediction(pending, 12 * H, x, 0.1, every_ms=H, max_pending=10)
    assert pending[0].ts == 12 * H


def test_resolution_boundaries():
    def labels(order_ts, now_ts):
        pending = [PendingChurn(10, {}, 0.5)]
        out = resolve_churn(pending, order_ts=order_ts, now_ts=now_ts, horizon_ms=100)
        return [label.y for label in out], len(pending)

    assert labels(10, 10) == ([], 1)  # an order at the prediction's time came before it
    assert labels(11, 11) == ([], 1)  # settled as "stayed", delivered at the horizon's end
    assert labels(110, 110) == ([False], 0)  # the horizon's last instant still counts
    assert labels(None, 109) == ([], 1)
    assert labels(None, 110) == ([True], 0)
    assert labels(111, 111) == ([True], 0)  # an order after the horizon: churned
    pending = [PendingChurn(10, {}, 0.5)]
    assert resolve_churn(pending, order_ts=50, now_ts=50, horizon_ms=100) == []
    assert pending[0].ordered
    assert resolve_churn(pending, order_ts=None, now_ts=110, horizon_ms=100) == [({}, 0.5, False, None, None)]


def test_plain_list_entries_and_round_trip():
    """Entries of every age: 3 fields (before ``ordered``), 4 (before ``btyd``), and 5."""
    pending = [
        [0, {"a": 1.0}, 0.3],
        [DAY, {"a": 2.0}, 0.4, True],
        PendingChurn(2 * DAY, {"a": 2.0}, 0.4, btyd=[0.7, 0.5, 0.25]),
    ]
    said = (0.6, 0.7)
    add_churn_prediction(pending, 3 * DAY, {"a": 3.0}, 0.5, btyd=(0.6, 0.9, 0.5), said=said)
    assert all(isinstance(p, PendingChurn) for p in pending)
    assert pending[-1].said == [0.6, 0.7]
    assert [(p.ordered, p.btyd) for p in pending] == [
        (False, None),
        (True, None),
        (False, [0.7, 0.5, 0.25]),
        (False, [0.6, 0.9, 0.5]),
    ]
    labels = resolve_churn(pending[:], order_ts=None, now_ts=9 * DAY, horizon_ms=DAY)
    assert [label.btyd for label in labels] == [None, None, [0.7, 0.5, 0.25], [0.6, 0.9, 0.5]]
    assert [label.said for label in labels] == [None, None, None, [0.6, 0.7]]
    raw = orjson.dumps([list(p) for p in pending])
    again = [PendingChurn.from_list(p) for p in orjson.loads(raw)]
    assert again == pending
    assert [p.to_list() for p in again] == orjson.loads(raw)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 20 * DAY), st.booleans()), max_size=30),
    st.integers(DAY, 10 * DAY),
)
def test_online_labels_equal_hindsight_labels(steps, horizon):
    """Events in event-time order (distinct times): each prediction gets exactly one label,
    and it is the label hindsight over the whole history gives."""
    times = sorted({t for t, _ in steps})
    is_order = dict(steps)
    orders = [t for t in times if is_order[t]]
    pending: list = []
    got: dict[int, bool] = {}
    for t in times:
        for x, _p, y, *_rest in resolve_churn(
            pending, order_ts=t if is_order[t] else None, now_ts=t, horizon_ms=horizon
        ):
            assert int(x["ts"]) not in got
            got[int(x["ts"])] = y
        add_churn_prediction(pending, t, {"ts": float(t)}, 0.5, every_ms=1, max_pending=10**6)
    end = (times[-1] if times else 0) + horizon
    for x, _p, y, *_rest in resolve_churn(pending, order_ts=None, now_ts=end, horizon_ms=horizon):
        got[int(x["ts"])] = y
    assert pending == []
    assert got == {t: not any(t < o <= t + horizon for o in orders) for t in times}


def test_offer_rewards():
    offer = PendingOffer(ts=100, arm="10_percent", propensity=0.925, context={"c": 1.0}, cost=0.1)
    kw = {"window_ms": 50}
    assert resolve_offer(None, order_ts=120, now_ts=120, **kw) is None
    assert resolve_offer(offer, order_ts=None, now_ts=149, **kw) is None
    assert resolve_offer(offer, order_ts=100, now_ts=100, **kw) is None  # not after the offer
    assert resolve_offer(offer, order_ts=150, now_ts=150, **kw) == 0.9
    assert resolve_offer(offer, order_ts=None, now_ts=150, **kw) == -0.1
    assert resolve_offer(offer, order_ts=151, now_ts=151, **kw) == -0.1
    plain = {"ts": 100, "arm": "none", "propensity": 0.025, "context": {}}  # no cost: 0
    assert resolve_offer(plain, order_ts=120, now_ts=120, **kw) == 1.0
    assert PendingOffer.from_dict(orjson.loads(orjson.dumps(offer.to_dict()))) == offer


def test_interest_resolution():
    pending = PendingInterest(ts=10, ranked=["a", "b"], candidates={"a": {"onnx_p": 1.0}})
    assert resolve_interest(None, category="a", ts=20) is None
    assert resolve_interest(pending, category="unknown", ts=20) is None
    assert resolve_interest(pending, category="a", ts=9) is None  # older than the ranking
    assert resolve_interest(pending, category="c", ts=10) == (
        {"a": {"onnx_p": 1.0}},
        ["a", "b"],
        "c",
    )
    plain = orjson.loads(orjson.dumps(pending.to_dict()))
    assert PendingInterest.from_dict(plain) == pending
    assert resolve_interest(plain, category="b", ts=11)[2] == "b"
