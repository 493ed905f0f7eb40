"""Training sets by replay: labels come from the future, features never see it."""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np
import pytest

from offline_train.dataset import DatasetConfig, TrainingSets, build_training_sets
from offline_train.logs import EventList, read_events
from stream.contract.events import CartChange, Click, Order
from stream.features import FeatureConfig, UserState, apply_event, feature_vector
from stream.features.state import current_profile
from stream.models.inputs import category_bucket, category_sequence

from .conftest import SMALL

DAY = 86_400_000


def _replay_until(events, user: str, until_ms: int, inclusive_id: str | None = None) -> UserState:
    """A fresh state of ``user`` from the events up to ``until_ms`` only."""
    state = UserState(user)
    for e in events:
        if e.ts > until_ms:
            break
        if e.user_id == user:
            apply_event(state, e, FeatureConfig())
            if inclusive_id is not None and e.event_id == inclusive_id:
                break
    return state


def test_cutoff_features_equal_a_replay_of_the_past_only(
    small_events: EventList, small_sets: TrainingSets
) -> None:
    """No leak: a snapshot equals the features of a replay that never saw later events."""
    c = small_sets.cutoffs
    rng = np.random.default_rng(0)
    for row in rng.choice(len(c.t), 25, replace=False):
        t, user = int(c.t[row]), c.users[row]
        past = _replay_until(small_events.events, user, t)
        expected = np.asarray(feature_vector(past, t, FeatureConfig()), np.float32)
        np.testing.assert_array_equal(c.features[row], expected)


def test_features_do_not_change_when_the_future_changes(small_events: EventList) -> None:
    """Rewriting everything after a time leaves every earlier snapshot identical."""
    events = small_events.events
    cut = events[len(events) * 2 // 3].ts
    altered = [
        e
        if e.ts <= cut or not isinstance(e, Click)
        else Click(e.event_id, e.user_id, e.ts, "other-item", "other-category", 1.0)
        for e in events
    ]
    a = build_training_sets(events, SMALL)
    b = build_training_sets(altered, SMALL)
    early_a, early_b = a.interest.t <= cut, b.interest.t <= cut
    np.testing.assert_array_equal(a.interest.features[early_a], b.interest.features[early_b])
    np.testing.assert_array_equal(a.interest.sequence[early_a], b.interest.sequence[early_b])
    assert not np.array_equal(a.interest.label, b.interest.label)  # the future did change
    early = a.cutoffs.t <= cut
    np.testing.assert_array_equal(a.cutoffs.features[early], b.cutoffs.features[early])


def test_churn_and_spend_labels_are_the_future_orders(
    small_events: EventList, small_sets: TrainingSets
) -> None:
    orders: dict[str, list[Order]] = defaultdict(list)
    for e in small_events.events:
        if isinstance(e, Order):
            orders[e.user_id].append(e)
    c, horizon = small_sets.cutoffs, SMALL.churn_horizon_ms
    for row in range(0, len(c.t), max(1, len(c.t) // 200)):
        t, user = int(c.t[row]), c.users[row]
        future = [o for o in orders[user] if t < o.ts <= t + horizon]
        past = [o for o in orders[user] if t - horizon < o.ts <= t]
        assert c.churn[row] == float(not future)
        assert c.spend[row] == pytest.approx(sum(o.total for o in future), rel=1e-5, abs=1e-3)
        assert c.spend_before[row] == pytest.approx(sum(o.total for o in past), rel=1e-5, abs=1e-3)
    assert 0 < c.churn.mean() < 1


def test_interest_label_is_the_next_action_category(
    small_events: EventList, small_sets: TrainingSets
) -> None:
    actions: dict[str, list] = defaultdict(list)
    for e in small_events.events:
        if isinstance(e, Click) or (isinstance(e, CartChange) and e.action == "add"):
            actions[e.user_id].append(e)
    s = small_sets.interest
    found = 0
    for user, acts in actions.items():
        times = [a.ts for a in acts]
        for a, nxt in itertools.pairwise(acts):
            rows = np.flatnonzero((s.t == a.ts) & (s.label_ts == nxt.ts))
            if len(rows) == 1 and times.count(a.ts) == 1:
                assert s.label[rows[0]] == category_bucket(nxt.category)
                state = _replay_until(small_events.events, user, a.ts, a.event_id)
                profile = current_profile(state, FeatureConfig())
                assert s.sequence[rows[0]].tolist() == category_sequence(profile)
                found += 1
        if found > 30:
            break
    assert found > 30


def test_recs_labels_are_the_users_later_adds_not_in_the_cart(
    small_events: EventList, small_sets: TrainingSets
) -> None:
    r = small_sets.recs
    assert len(r.t) > 20
    adds: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for e in small_events.events:
        if isinstance(e, CartChange) and e.action == "add":
            adds[e.user_id].append((e.ts, e.item_id))
    for p in range(len(r.t)):
        t, user = int(r.t[p]), r.users[p]
        later = {i for ts, i in adds[user] if t < ts <= t + SMALL.recs_horizon_ms}
        state = _replay_until(small_events.events, user, t)
        in_cart = set(current_profile(state, FeatureConfig()).cart)
        assert r.relevant[p] == later - in_cart
        rows = slice(r.offsets[p], r.offsets[p + 1])
        assert not in_cart & set(r.items[rows])  # never recommends what is in the cart
        labels = dict(zip(r.items[rows], r.label[rows], strict=True))
        assert all(labels[i] == float(i in r.relevant[p]) for i in labels)


def test_time_split_separates_training_labels_from_validation(small_sets: TrainingSets) -> None:
    split, c = small_sets.split, small_sets.cutoffs
    end = c.t + SMALL.churn_horizon_ms
    train, val = split.train(c.t, end), split.validation(c.t, end)
    assert train.any() and val.any() and not (train & val).any()
    assert end[train].max() <= split.split_ts <= c.t[val].min()
    assert end[val].max() <= split.last_ts
    s = small_sets.interest
    tr, va = split.train(s.t, s.label_ts), split.validation(s.t, s.label_ts)
    assert s.label_ts[tr].max() <= split.split_ts <= s.t[va].min()


def test_a_log_too_short_for_the_horizon_is_refused(small_events: EventList) -> None:
    from stream.errors import TrainingError

    with pytest.raises(TrainingError, match="too short"):
        build_training_sets(small_events.events, DatasetConfig(churn_horizon_days=30))


def test_parquet_log_gives_the_same_events(small_log, small_events: EventList, tmp_path) -> None:
    import orjson
    import pyarrow as pa  # the train extra: CI installs it, so no skip
    import pyarrow.parquet as pq

    rows = [orjson.loads(line) for line in small_log.read_bytes().splitlines()[:3000]]
    columns = sorted({k for row in rows for k in row})  # one column per field, null if absent
    table = pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows])
    pq.write_table(table, tmp_path / "log.parquet")
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_bytes(b"\n".join(small_log.read_bytes().splitlines()[:3000]) + b"\n")
    assert list(read_events(tmp_path / "log.parquet")) == list(read_events(jsonl))
