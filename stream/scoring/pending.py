"""Delayed labels: predictions waiting for the stream to say whether they came true.

Pure bookkeeping over a small per-user record, in event time only, so a replay delivers the
same labels in the same order. Each record converts to and from plain lists/dicts that orjson
writes, for the per-user changelog table (the functions also accept those plain forms).

Churn (``y=True`` means the user churned: no order within the horizon):

* a prediction at ``ts`` is *negative* as soon as an order arrives with
  ``ts < order_ts <= ts + horizon`` — the user did order;
* it is *positive* once event time reaches ``ts + horizon`` without such an order.

An order at the very time of a prediction does not resolve it: the prediction was made after
the event it was scored on. So on an order, resolve first and then add the new prediction.
Users are scored on every event and clock tick; only the first prediction per ``every_ms`` of
event time (aligned periods, one a day by default) waits for a label, and at most
``max_pending``, so a busy user neither floods the learner nor the table. Labels are final: an
order arriving later than its horizon already closed cannot turn a positive back.

Offers: the reward of an offer shown at ``ts`` is ``1 - cost`` when an order arrives with
``ts < order_ts <= ts + window``, and ``-cost`` once the window has passed without one.

Interest: the last published top-k and the candidate features it was ranked from wait for the
user's next action; that action's category is the label (an ``unknown`` category resolves
nothing, the next known one does).

>>> day = 86_400_000
>>> pending = []
>>> add_churn_prediction(pending, 0, {"orders": 1.0}, 0.2)
>>> add_churn_prediction(pending, 3_600_000, {"orders": 1.0}, 0.3)  # same day: not kept
>>> add_churn_prediction(pending, 2 * day, {"orders": 1.0}, 0.4)
>>> [p.ts for p in pending]
[0, 172800000]
>>> resolve_churn(pending, order_ts=None, now_ts=31 * day, horizon_ms=30 * day)
[ChurnLabel(x={'orders': 1.0}, p_onnx=0.2, y=True, btyd=None, said=None)]
>>> resolve_churn(pending, order_ts=31 * day, now_ts=31 * day, horizon_ms=30 * day)
[]
>>> resolve_churn(pending, order_ts=None, now_ts=32 * day, horizon_ms=30 * day)
[ChurnLabel(x={'orders': 1.0}, p_onnx=0.4, y=False, btyd=None, said=None)]
>>> pending
[]
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "ChurnLabel",
    "InterestLabel",
    "PendingChurn",
    "PendingInterest",
    "PendingOffer",
    "add_churn_prediction",
    "churn_prediction_wanted",
    "resolve_churn",
    "resolve_interest",
    "resolve_offer",
]

DAY_MS = 86_400_000


class ChurnLabel(NamedTuple):
    """What ``resolve_churn`` delivers per label, ready for ``ChurnBlend.learn``."""

    x: dict[str, float] | list[float]
    p_onnx: float
    y: bool
    #: ``PendingChurn.btyd`` and ``PendingChurn.said``.
    btyd: list[float] | None = None
    said: list[float] | None = None


# -- churn -----------------------------------------------------------------------------------


@dataclass(slots=True)
class PendingChurn:
    """A churn prediction at event time ``ts`` from features ``x``, the ONNX probability and
    the BTYD expert's view."""

    ts: int
    #: The learner's input, or the compact feature vector the caller derives it from (a list
    #: of floats keeps a user's pending predictions small in the changelog).
    x: dict[str, float] | list[float]
    p_onnx: float
    #: An order came within the horizon: the label is known (stayed), delivered at its end.
    ordered: bool = False
    #: The BTYD expert's ``[P(no order within the horizon), P(alive), expected orders within
    #: it]`` as predicted then (None: no view, the user had not ordered). Kept rather than
    #: recomputed at the label, so the blend judges the expert by what it said at the time,
    #: with the parameters it had then.
    btyd: list[float] | None = None
    #: What was published then and what the churn blend's online stacker said: ``[published,
    #: stacker]`` (``ChurnBlend.learn``).
    said: list[float] | None = None

    def to_list(self) -> list[Any]:
        return [self.ts, self.x, self.p_onnx, self.ordered, self.btyd, self.said]

    @classmethod
    def from_list(cls, data: Sequence[Any]) -> PendingChurn:
        """From ``to_list``'s form; records written before a field existed lack it (3 fields
        before ``ordered``, 4 before ``btyd``, 5 before ``said``)."""
        ts, x, p_onnx, *rest = data
        ordered = bool(rest and rest[0])
        btyd = rest[1] if len(rest) > 1 else None
        said = rest[2] if len(rest) > 2 else None
        return cls(
            int(ts),
            _copy(x),
            float(p_onnx),
            ordered,
            None if btyd is None else [float(v) for v in btyd],
            None if said is None else [float(v) for v in said],
        )

    def __iter__(self) -> Iterator[Any]:  # so ``list(entry)`` is the plain form too
        return iter(self.to_list())


def _copy(x: Mapping[str, float] | Sequence[float]) -> dict[str, float] | list[float]:
    return dict(x) if isinstance(x, Mapping) else [float(v) for v in x]


def _normalise(pending: list[Any]) -> None:
    for i, entry in enumerate(pending):
        if not isinstance(entry, PendingChurn):
            pending[i] = PendingChurn.from_list(entry)


def churn_prediction_wanted(pending: list[Any], ts: int, *, every_ms: int = DAY_MS) -> bool:
    """Whether ``add_churn_prediction`` would keep a prediction at ``ts``: none is pending in
    its period yet (so the caller builds the stored input only then)."""
    _normalise(pending)
    period = ts // every_ms
    return not any(entry.ts // every_ms == period for entry in pending)


def add_churn_prediction(
    pending: list[Any],
    ts: int,
    x: Mapping[str, float],
    p_onnx: float,
    *,
    every_ms: int = DAY_MS,
    max_pending: int = 40,
    btyd: Sequence[float] | None = None,
    said: Sequence[float] | None = None,
) -> None:
    """Keep the prediction if it is the first in its ``every_ms`` period of event time, in ts
    order, dropping the oldest beyond ``max_pending``. ``pending`` is changed in place (plain
    ``[ts, x, p_onnx]`` entries become ``PendingChurn``); ``x``, ``btyd`` and ``said`` are
    copied."""
    if not churn_prediction_wanted(pending, ts, every_ms=every_ms):
        return
    entry = PendingChurn(
        int(ts),
        _copy(x),
        float(p_onnx),
        btyd=None if btyd is None else [float(v) for v in btyd],
        said=None if said is None else [float(v) for v in said],
    )
    at = bisect.bisect_right([e.ts for e in pending], entry.ts)
    pending.insert(at, entry)
    del pending[: max(0, len(pending) - max_pending)]


def resolve_churn(
    pending: list[Any], *, order_ts: int | None, now_ts: int, horizon_ms: int
) -> list[ChurnLabel]:
    """The labels event time ``now_ts`` delivers, oldest prediction first; delivered entries are
    removed from ``pending`` in place.

    An order at ``order_ts`` settles every prediction with ``ts < order_ts <= ts + horizon`` as
    "stayed", but every label is *delivered* when its horizon ends, "stayed" or "churned" alike.
    Delivered at the order instead, the "stayed" labels of a period would reach the learner a
    horizon before its "churned" ones, and a learner fed a stream of negatives first learns a
    shop where nobody churns (and, fitting noise, may even rank users backwards).
    """
    _normalise(pending)
    labels: list[ChurnLabel] = []
    keep: list[PendingChurn] = []
    for entry in pending:
        end = entry.ts + horizon_ms
        if order_ts is not None and entry.ts < order_ts <= end:
            entry.ordered = True
        if end <= now_ts:
            labels.append(
                ChurnLabel(entry.x, entry.p_onnx, not entry.ordered, entry.btyd, entry.said)
            )
        else:
            keep.append(entry)
    pending[:] = keep
    return labels


# -- offers ----------------------------------------------------------------------------------


@dataclass(slots=True)
class PendingOffer:
    """An offer shown at ``ts``: the arm, its propensity, the bandit context, and its cost
    (``OfferPolicy.cost(arm)``; 0 leaves the cost for the caller to subtract)."""

    ts: int
    arm: str
    propensity: float
    context: dict[str, float]
    cost: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "arm": self.arm,
            "propensity": self.propensity,
            "context": self.context,
            "cost": self.cost,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendingOffer:
        return cls(
            int(data["ts"]),
            str(data["arm"]),
            float(data["propensity"]),
            dict(data["context"]),
            float(data.get("cost", 0.0)),
        )


def resolve_offer(
    pending_offer: PendingOffer | Mapping[str, Any] | None,
    *,
    order_ts: int | None,
    now_ts: int,
    window_ms: int,
) -> float | None:
    """The offer's reward once known: ``1 - cost`` for an order within the window, ``-cost``
    when the window passed without one; None while it is still open (or nothing is pending)."""
    if pending_offer is None:
        return None
    offer = (
        pending_offer
        if isinstance(pending_offer, PendingOffer)
        else PendingOffer.from_dict(pending_offer)
    )
    end = offer.ts + window_ms
    if order_ts is not None and offer.ts < order_ts <= end:
        return 1.0 - offer.cost
    if end <= now_ts:
        return 0.0 - offer.cost
    return None


# -- interest --------------------------------------------------------------------------------


@dataclass(slots=True)
class PendingInterest:
    """The top-k published at ``ts`` and the per-candidate features it was ranked from."""

    ts: int
    ranked: list[str]
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ts": self.ts, "ranked": self.ranked, "candidates": self.candidates}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendingInterest:
        ts = data.get("ts")  # absent or null in records written before it was kept
        return cls(
            0 if ts is None else int(ts),
            list(data["ranked"]),
            {c: dict(f) for c, f in data["candidates"].items()},
        )


#: What ``resolve_interest`` delivers: ``(candidates, ranked, next_category)``, for
#: ``InterestBlend.learn(candidates, next_category)`` and ``record_hit(ranked, next_category)``.
InterestLabel = tuple[dict[str, dict[str, float]], list[str], str]


def resolve_interest(
    pending: PendingInterest | Mapping[str, Any] | None,
    *,
    category: str,
    ts: int,
    ignore: Collection[str] = ("unknown",),
) -> InterestLabel | None:
    """The label an action of ``category`` at event time ``ts`` gives the pending ranking, or
    None (nothing pending, an ignored category, or an action older than the ranking). The
    caller then replaces the pending ranking with the one it publishes for this action."""
    if pending is None or category in ignore:
        return None
    entry = pending if isinstance(pending, PendingInterest) else PendingInterest.from_dict(pending)
    if ts < entry.ts:
        return None
    return entry.candidates, entry.ranked, category


# -- when labels fall due ---------------------------------------------------------------------


class DueLabels:
    """Which users have a label falling due by a given event time, so stream time can deliver
    them without visiting every user: a min-heap of (due time, user id).

    An entry may be stale (its prediction was delivered early, or replaced); popping it costs
    one look at the user's pending predictions, nothing more. After a restart the heap is
    rebuilt from the scoring states (``rebuild``).

    >>> due = DueLabels()
    >>> due.add(30, "a"); due.add(10, "b"); due.add(30, "a")
    >>> due.pop_due(20), due.pop_due(30), due.pop_due(99)
    (['b'], ['a'], [])
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, due_ms: int, user_id: str) -> None:
        heapq.heappush(self._heap, (due_ms, user_id))

    def pop_due(self, now_ms: int) -> list[str]:
        """Users with something due at or before ``now_ms`` (each once, in due order)."""
        users: dict[str, None] = {}
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            users[heapq.heappop(heap)[1]] = None
        return list(users)
