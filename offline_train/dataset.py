"""Training sets by replay: the service's feature core run over a log, labels from its future.

One pass applies the cleaned events in event-time order to per-user ``UserState`` with the same
``apply_event`` the worker runs, and takes snapshots at prediction points:

* **cutoffs** (churn, purchase power): at midnight of every day after a warm-up, a sample of the
  users seen so far is read at that time, idle ones included (the service re-scores idle users
  on its clock). Labels: no order in ``(T, T + horizon]`` (churn) and the spend in
  ``(T, T + 30 d]``. Only cutoffs whose horizon ends inside the log are labelled.
* **interest**: after a sampled click or cart add; label: the category of the user's next click
  or cart add.
* **cart recommendation**: after a sampled cart add; candidates from ``cart_candidates``;
  label: the items the user adds within ``recs_horizon_ms`` that are not in the cart yet.

Features are taken *during* the pass, before any later event is applied, and labels only
*after* it from the recorded future, so a label cannot leak into features (a test checks it by
truncating the log). Sampling is a deterministic hash of the point, so runs are repeatable.
"""

from __future__ import annotations

import bisect
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import accumulate

import numpy as np

from offline_train.logs import EventList, EventSource
from offline_train.split import DAY_MS, TimeSplit, choose_split
from stream.contract.events import CartChange, Click, Event, Order
from stream.features import FEATURE_NAMES, FeatureConfig, Outcome, UserState, apply_event
from stream.features.state import current_profile, feature_vector
from stream.models.inputs import (
    CART_LEN,
    PAIR_FEATURES,
    SEQ_LEN,
    Candidates,
    cart_candidates,
    category_bucket,
    category_sequence,
)
from stream.models.popularity import ItemPopularity

__all__ = [
    "CutoffSet",
    "DatasetConfig",
    "InterestSet",
    "RecsSet",
    "TrainingSets",
    "build_training_sets",
]


@dataclass(frozen=True)
class DatasetConfig:
    """Horizons, sampling caps and the split; ``features`` must equal the service's."""

    churn_horizon_days: float = 30.0
    spend_horizon_days: float = 30.0
    recs_horizon_ms: int = 3_600_000
    warmup_days: float = 7.0
    validation_fraction: float = 0.3
    #: Caps on examples (sampled uniformly by a hash of the point), so training stays small.
    max_cutoff_rows: int = 150_000
    max_interest_points: int = 300_000
    max_recs_points: int = 30_000
    seed: int = 0
    features: FeatureConfig = field(default_factory=FeatureConfig)

    @property
    def churn_horizon_ms(self) -> int:
        return int(self.churn_horizon_days * DAY_MS)

    @property
    def spend_horizon_ms(self) -> int:
        return int(self.spend_horizon_days * DAY_MS)


@dataclass
class CutoffSet:
    """Users read at daily cutoffs ``t``: churn and purchase-power examples."""

    features: np.ndarray  # [N, F] float32
    t: np.ndarray  # [N] int64, the cutoff
    churn: np.ndarray  # [N] float32: 1 = no order within the churn horizon
    spend: np.ndarray  # [N] float32: spend within the spend horizon
    spend_before: np.ndarray  # [N] float32: spend in the same span before t (a baseline)
    users: list[str]


@dataclass
class InterestSet:
    """Points after a click or cart add: which category comes next."""

    features: np.ndarray  # [N, F] float32
    sequence: np.ndarray  # [N, SEQ_LEN] int32 category buckets, newest last
    label: np.ndarray  # [N] int32 category bucket of the next click/add
    t: np.ndarray  # [N] int64
    label_ts: np.ndarray  # [N] int64, when the next action happened
    categories: Counter[str]  # label categories, for the vocabulary and the baseline


@dataclass
class RecsSet:
    """Points after a cart add, each with its candidate rows (``offsets`` delimit them)."""

    t: np.ndarray  # [P] int64
    users: list[str]  # [P]
    offsets: np.ndarray  # [P + 1] int64: rows of point p are offsets[p]:offsets[p + 1]
    relevant: list[frozenset[str]]  # [P] items added later (the label)
    popular: list[list[str]]  # [P] shop-wide most popular items at t, not in the cart
    items: list[str]  # [R] candidate item ids
    candidate: np.ndarray  # [R, 2] int32
    cart: np.ndarray  # [R, CART_LEN] int32
    pair: np.ndarray  # [R, len(PAIR_FEATURES)] float32
    label: np.ndarray  # [R] float32: 1 = the candidate was added later


@dataclass
class TrainingSets:
    cutoffs: CutoffSet
    interest: InterestSet
    recs: RecsSet
    split: TimeSplit
    config: DatasetConfig
    n_events: int
    n_users: int
    #: Events the cleaning rules refused, by reason (as the worker would dead-letter them).
    rejected: dict[str, int] = field(default_factory=dict)


def _keep(key: str, rate: float, seed: int) -> bool:
    return rate >= 1.0 or zlib.crc32(f"{seed}:{key}".encode()) < rate * 2**32


def build_training_sets(
    events: EventSource | Iterable[Event],
    config: DatasetConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrainingSets:
    """Replay ``events``: a log from ``offline_train.logs.read_events`` (decoded lazily) or
    cleaned events in memory."""
    config = config or DatasetConfig()
    if not isinstance(events, EventSource):
        events = EventList.of(events)
    fc = config.features
    first_ts, last_ts = events.first_ts, events.last_ts
    split = choose_split(
        first_ts,
        last_ts,
        horizon_ms=max(config.churn_horizon_ms, config.spend_horizon_ms),
        warmup_ms=int(config.warmup_days * DAY_MS),
        validation_fraction=config.validation_fraction,
    )
    horizon = max(config.churn_horizon_ms, config.spend_horizon_ms)
    day0 = first_ts - first_ts % DAY_MS
    cutoffs = [
        t
        for t in range(day0 + int(config.warmup_days * DAY_MS), last_ts - horizon + 1, DAY_MS)
        if t + horizon <= split.split_ts or t >= split.split_ts  # the gap trains nothing
    ]
    n_users = events.n_users
    cutoff_rate = config.max_cutoff_rows / max(1, n_users * len(cutoffs))
    interest_rate = config.max_interest_points / max(1, events.n_actions)
    recs_rate = config.max_recs_points / max(1, events.n_adds) * 1.5  # some have no label

    states: dict[str, UserState] = {}
    popularity = ItemPopularity()
    orders: dict[str, list[tuple[int, float]]] = {}
    actions: dict[str, list[tuple[int, str]]] = {}
    adds: dict[str, list[tuple[int, str]]] = {}
    cut_rows: list[tuple[str, int, list[float]]] = []
    interest_rows: list[tuple[str, int, int, list[float], list[int]]] = []
    recs_rows: list[tuple[str, int, frozenset[str], Candidates, list[str]]] = []

    def snapshot(t: int) -> None:
        for uid, state in states.items():
            if _keep(f"{uid}@{t}", cutoff_rate, config.seed):
                cut_rows.append((uid, t, feature_vector(state, t, fc)))

    ci = 0
    total = events.n_events
    for n, event in enumerate(events):
        while ci < len(cutoffs) and cutoffs[ci] < event.ts:
            snapshot(cutoffs[ci])
            ci += 1
        uid = event.user_id
        state = states.get(uid)
        if state is None:
            state = states[uid] = UserState(uid)
        if apply_event(state, event, fc) is not Outcome.APPLIED:
            continue
        popularity.observe(event)
        if isinstance(event, Order):
            orders.setdefault(uid, []).append((event.ts, event.total))
            continue
        if not _is_action(event):
            continue
        history = actions.setdefault(uid, [])
        history.append((event.ts, event.category))
        if _keep(event.event_id, interest_rate, config.seed):
            profile = current_profile(state, fc)
            interest_rows.append(
                (
                    uid,
                    len(history) - 1,
                    event.ts,
                    feature_vector(state, event.ts, fc),
                    category_sequence(profile),
                )
            )
        if isinstance(event, CartChange):
            adds.setdefault(uid, []).append((event.ts, event.item_id))
            if _keep("r" + event.event_id, recs_rate, config.seed):
                profile = current_profile(state, fc)
                if profile.cart:
                    in_cart = frozenset(profile.cart)
                    candidates = cart_candidates(profile, popularity, event.ts)
                    popular = popularity.top(20, exclude=in_cart)
                    recs_rows.append((uid, event.ts, in_cart, candidates, popular))
        if progress is not None and n % 50_000 == 0:
            progress(n, total)
    while ci < len(cutoffs):
        snapshot(cutoffs[ci])
        ci += 1
    if progress is not None:
        progress(total, total)

    return TrainingSets(
        cutoffs=_label_cutoffs(cut_rows, orders, config),
        interest=_label_interest(interest_rows, actions),
        recs=_label_recs(recs_rows, adds, config.recs_horizon_ms),
        split=split,
        config=config,
        n_events=total,
        n_users=n_users,
        rejected=dict(events.rejected),
    )


def _is_action(event: Event) -> bool:
    return isinstance(event, Click) or (isinstance(event, CartChange) and event.action == "add")


def _label_cutoffs(
    rows: list[tuple[str, int, list[float]]],
    orders: dict[str, list[tuple[int, float]]],
    config: DatasetConfig,
) -> CutoffSet:
    index: dict[str, tuple[list[int], list[float]]] = {}
    for uid, placed in orders.items():
        index[uid] = ([t for t, _v in placed], [0.0, *accumulate(v for _t, v in placed)])

    def spend_in(uid: str, start: int, end: int) -> tuple[float, int]:
        """Spend and order count in ``(start, end]``."""
        times, cum = index.get(uid, ([], [0.0]))
        lo, hi = bisect.bisect_right(times, start), bisect.bisect_right(times, end)
        return cum[hi] - cum[lo], hi - lo

    churn, spend, before = [], [], []
    for uid, t, _vec in rows:
        _s, n_orders = spend_in(uid, t, t + config.churn_horizon_ms)
        churn.append(float(n_orders == 0))
        spend.append(spend_in(uid, t, t + config.spend_horizon_ms)[0])
        before.append(spend_in(uid, t - config.spend_horizon_ms, t)[0])
    return CutoffSet(
        features=np.asarray([r[2] for r in rows], np.float32).reshape(-1, len(FEATURE_NAMES)),
        t=np.asarray([r[1] for r in rows], np.int64),
        churn=np.asarray(churn, np.float32),
        spend=np.asarray(spend, np.float32),
        spend_before=np.asarray(before, np.float32),
        users=[r[0] for r in rows],
    )


def _label_interest(
    rows: list[tuple[str, int, int, list[float], list[int]]],
    actions: dict[str, list[tuple[int, str]]],
) -> InterestSet:
    kept = []
    categories: Counter[str] = Counter()
    for uid, index, t, vec, seq in rows:
        history = actions[uid]
        if index + 1 < len(history):
            label_ts, category = history[index + 1]
            kept.append((vec, seq, category_bucket(category), t, label_ts))
            categories[category] += 1
    return InterestSet(
        features=np.asarray([k[0] for k in kept], np.float32).reshape(-1, len(FEATURE_NAMES)),
        sequence=np.asarray([k[1] for k in kept], np.int32).reshape(-1, SEQ_LEN),
        label=np.asarray([k[2] for k in kept], np.int32),
        t=np.asarray([k[3] for k in kept], np.int64),
        label_ts=np.asarray([k[4] for k in kept], np.int64),
        categories=categories,
    )


def _label_recs(
    rows: list[tuple[str, int, frozenset[str], Candidates, list[str]]],
    adds: dict[str, list[tuple[int, str]]],
    horizon_ms: int,
) -> RecsSet:
    t_list, users, offsets, relevant_list, popular_list, items = [], [], [0], [], [], []
    candidate, cart, pair, label = [], [], [], []
    for uid, t, in_cart, candidates, popular in rows:
        later = adds.get(uid, [])
        lo = bisect.bisect_right(later, (t, "\uffff"))
        relevant = frozenset(
            item for ts, item in later[lo:] if ts <= t + horizon_ms and item not in in_cart
        )
        if not relevant or not candidates.items:
            continue
        t_list.append(t)
        users.append(uid)
        relevant_list.append(relevant)
        popular_list.append(popular)
        items.extend(candidates.items)
        candidate.append(candidates.candidate)
        cart.append(candidates.cart)
        pair.append(candidates.pair)
        label.extend(float(i in relevant) for i in candidates.items)
        offsets.append(len(items))
    return RecsSet(
        t=np.asarray(t_list, np.int64),
        users=users,
        offsets=np.asarray(offsets, np.int64),
        relevant=relevant_list,
        popular=popular_list,
        items=items,
        candidate=np.concatenate(candidate) if candidate else np.zeros((0, 2), np.int32),
        cart=np.concatenate(cart) if cart else np.zeros((0, CART_LEN), np.int32),
        pair=np.concatenate(pair) if pair else np.zeros((0, len(PAIR_FEATURES)), np.float32),
        label=np.asarray(label, np.float32),
    )
