"""From the users a micro-batch touched to the messages of the five output topics.

Three steps, so a worker can run the middle one off the event loop: ``prepare`` reads feature
vectors and model inputs for the whole batch (pure Python), ``infer`` makes one onnxruntime
call per model for the whole batch (releases the GIL: the worker runs it in an executor), and
``finish`` delivers delayed labels to the online learners, blends, and builds the messages.
``score`` chains them for offline evaluation, so offline figures come from the same code the
worker runs.

A user is the unit of failure, not the batch: whatever raises while one user is prepared,
inferred, labelled, scored or encoded costs that user's scores of the batch (a ``ScoreFailure``
in ``ScoreResult.failed``) and nothing else. Each user's scoring state is changed on a working
copy and written back only when the user's step succeeded, except that once labels reached the
learners their consumption is written back whatever follows: a retry (the next event, a
redelivery) never teaches a learner the same label twice. The batch keeps one onnxruntime call
per model; only when that call itself fails is each user inferred alone (``infer_isolated``).

Labels are revealed by the stream itself, in event time:

- churn: an order within the horizon after a prediction makes it a negative; the horizon
  passing without an order (seen at the user's next event or at a clock tick) a positive;
- interest: the category of the user's next action;
- offers: an order within the offer window after the offer (reward 1 minus the offer's cost),
  else minus its cost once the window has passed (``pending.resolve_offer``).

The batch's data types are in ``stream.scoring.batch``, one user's labels and scores in
``stream.scoring.user_steps``, the steps run once per partition (the BTYD expert, the churn
blend's experts) in ``stream.scoring.partition_steps``; this module keeps the steps and
re-exports the names callers import from it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from stream.contract.events import CartChange, Order
from stream.features import feature_vector
from stream.features.profile import Profile
from stream.features.schema import FEATURE_NAMES
from stream.features.state import current_profile
from stream.models.inputs import (
    SEQ_LEN,
    cart_candidates,
    category_sequence,
    feature_matrix,
)
from stream.models.registry import Model
from stream.scoring.batch import (
    DAY_MS,
    OUTPUT_TOPICS,
    Cart,
    Inferred,
    Prepared,
    ScoreFailure,
    ScoreResult,
    ScoringConfig,
    ScoringFailed,
    UserInput,
)
from stream.scoring.churn_input import MOMENT_FEATURES, churn_inputs
from stream.scoring.partition_steps import (
    Labelled,
    btyd_views,
    by_partition,
    churn_figures,
    refit_btyd,
)
from stream.scoring.pending import PendingChurn
from stream.scoring.state import Learners, UserScores
from stream.scoring.user_steps import BtydView, learn, reveal, score_user

__all__ = [
    "DAY_MS",
    "MOMENT_FEATURES",
    "OUTPUT_TOPICS",
    "Inferred",
    "Prepared",
    "ScoreFailure",
    "ScoreResult",
    "Scorer",
    "ScoringConfig",
    "ScoringFailed",
    "UserInput",
    "churn_inputs",
]


class Scorer:
    """Scores batches with a set of ONNX models; swap ``models`` between batches."""

    def __init__(self, models: dict[str, Model], config: ScoringConfig | None = None) -> None:
        self.models = models
        self.config = config or ScoringConfig()

    def versions(self) -> dict[str, str]:
        return {name: model.version for name, model in self.models.items()}

    # -- step 1 ---------------------------------------------------------------------------

    def prepare(
        self, users: list[UserInput], learners_of: Callable[[int], Learners], churn_only: bool
    ) -> Prepared:
        """Feature rows (and, for a full score, category sequences and cart candidates) of the
        batch; shop popularity learns the batch's events. A user whose preparation raises is
        left out (``Prepared.failed``)."""
        cfg = self.config.features
        kept: list[UserInput] = []
        vectors: list[list[float]] = []
        sequences: list[list[int]] = []
        carts: list[tuple[int, Cart]] = []
        failed: list[ScoreFailure] = []
        for user in users:
            try:
                vector = feature_vector(user.state, user.at_ms, cfg)
                if len(vector) != len(FEATURE_NAMES):
                    raise ValueError(f"{len(vector)} features, expected {len(FEATURE_NAMES)}")
                if not churn_only:
                    profile = current_profile(user.state, cfg)
                    sequence = category_sequence(profile)
                    learners = learners_of(user.partition)
                    for event in user.events:
                        learners.popularity.observe(event)
                    cart = self._cart(user, profile, learners)
            except Exception as exc:
                failed.append(ScoreFailure(user.user_id, user.partition, "prepare", exc))
                continue
            if not churn_only:
                if cart is not None:
                    carts.append((len(kept), cart))
                sequences.append(sequence)
            kept.append(user)
            vectors.append(vector)
        prepared = Prepared(kept, churn_only, self.models, feature_matrix(vectors), vectors)
        if not kept:
            prepared.features = np.zeros((0, len(FEATURE_NAMES)), np.float32)
        prepared.failed = failed
        if not churn_only:
            prepared.sequences = np.asarray(sequences, np.int32).reshape(len(kept), SEQ_LEN)
            prepared.carts = carts
        return prepared

    def _cart(self, user: UserInput, profile: Profile, learners: Learners) -> Cart | None:
        """The user's cart with its candidates, when they added to it in this batch."""
        if not any(isinstance(e, CartChange) and e.action == "add" for e in user.events):
            return None
        if not profile.cart:
            return None
        cart = sorted(profile.cart)
        cooccurrence = learners.cooccurrence
        neighbours = cooccurrence.neighbour_weights(cart, now_ms=user.at_ms)
        extra = cooccurrence.candidates(
            cart, self.config.recs_k * 2, now_ms=user.at_ms, exclude=(), weights=neighbours
        )
        candidates = cart_candidates(
            profile, learners.popularity, user.at_ms, extra_items=[item for item, _w in extra]
        )
        return Cart(candidates, neighbours) if candidates.items else None

    # -- step 2 (thread-safe: onnxruntime only) -------------------------------------------

    def infer(self, prepared: Prepared) -> Inferred:
        models = prepared.models
        features = prepared.features
        if not len(features):
            return Inferred(churn=np.zeros(0, np.float32))
        timer = _Timer()
        out = Inferred(churn=timer.run("churn", models["churn"].predict, features))
        if not prepared.churn_only and len(features):
            out.spend = timer.run("purchase_power", models["purchase_power"].predict, features)
            interest = models["interest"]
            feed = _feed(interest, features=features, sequence=prepared.sequences)
            out.interest = timer.run("interest", interest.predict, feed)
            if prepared.carts:
                rows = [c.candidates.inputs() for _i, c in prepared.carts]
                recs = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
                out.recs = timer.run("cart_recs", models["cart_recs"].predict, recs)
        out.seconds = timer.seconds
        return out

    def infer_isolated(self, prepared: Prepared) -> tuple[Prepared, Inferred]:
        """``infer`` for the whole batch (one call per model); only if that raises, each user
        alone, so the users whose rows fail are left out (``Prepared.failed``) and the others
        are scored. Returns the batch that was inferred and its inference."""
        try:
            return prepared, self.infer(prepared)
        except Exception:
            pass
        parts: list[Inferred] = []
        keep: list[int] = []
        failed = list(prepared.failed)
        for index, user in enumerate(prepared.users):
            try:
                parts.append(self.infer(prepared.subset([index])))
            except Exception as exc:
                failed.append(ScoreFailure(user.user_id, user.partition, "infer", exc))
            else:
                keep.append(index)
        narrowed = prepared.subset(keep)
        narrowed.failed = failed
        return narrowed, Inferred.concat(parts)

    # -- step 3 ---------------------------------------------------------------------------

    def finish(
        self, prepared: Prepared, inferred: Inferred, learners_of: Callable[[int], Learners]
    ) -> ScoreResult:
        """Deliver labels, blend and build every user's messages: a user whose step raises is
        a ``ScoreFailure`` and the others go on (module docstring).

        In two passes, so the churn blend predicts once per partition for the whole batch:
        first every user's labels reach the learners, then every user is scored. A prediction
        thus sees every label its batch revealed."""
        result = ScoreResult(failed=list(prepared.failed))
        versions = {name: model.version for name, model in prepared.models.items()}
        recs_offset = 0
        recs_rows: dict[int, tuple[Cart, int, int]] = {}
        for index, cart in prepared.carts:
            stop = recs_offset + len(cart.candidates.items)
            recs_rows[index] = (cart, recs_offset, stop)
            recs_offset = stop
        labelled: list[Labelled] = []
        for index, user in enumerate(prepared.users):
            try:
                learners = learners_of(user.partition)
            except Exception as exc:
                result.failed.append(ScoreFailure(user.user_id, user.partition, "labels", exc))
                continue
            result.partitions.add(user.partition)
            step = self._labels(index, user, learners, result)
            if step is not None:
                labelled.append(step)
        partitions = by_partition(labelled)
        refit_btyd(partitions)
        btyd = btyd_views(partitions, prepared, self.config)
        said = churn_figures(partitions, prepared, inferred, btyd)
        for step in labelled:
            recs = None
            if step.index in recs_rows and inferred.recs is not None:
                cart, start, stop = recs_rows[step.index]
                recs = (cart, inferred.recs[start:stop])
            figures = said.get(step.index)
            view = btyd.get(step.index)
            self._score_user(step, prepared, inferred, recs, versions, figures, view, result)
        return result

    def _labels(
        self, index: int, user: UserInput, learners: Learners, result: ScoreResult
    ) -> Labelled | None:
        """One user's labels, learned, on a working copy of their scoring state; None (and a
        ``ScoreFailure``) when that raises."""
        scores = user.scores
        after_labels: UserScores | None = None
        try:
            work = _working_copy(scores)
            labels = reveal(self.config, work, user.events, user.at_ms)
            if labels:  # from here on, the labels count as delivered whatever follows
                after_labels = _working_copy(work)
            learn(labels, learners, user.partition, result)
            for event in user.events:
                if isinstance(event, Order):
                    learners.btyd.observe(user.user_id, event.ts, event.total)
        except Exception as exc:
            if after_labels is not None:
                _commit(scores, after_labels)
                result.changed.append(user)
            result.failed.append(
                ScoreFailure(user.user_id, user.partition, "labels", exc, after_labels is not None)
            )
            return None
        return Labelled(index, user, learners, work, after_labels)

    def _score_user(
        self,
        step: Labelled,
        prepared: Prepared,
        inferred: Inferred,
        recs: tuple[Cart, np.ndarray] | None,
        versions: dict[str, str],
        said: list[float | None] | None,
        btyd: BtydView | None,
        result: ScoreResult,
    ) -> None:
        """One user's scores and messages, on the working copy their labels left."""
        user, scores, work = step.user, step.user.scores, step.work
        mine = ScoreResult()
        stage = "score"
        try:
            user.scores = work  # what the scoring pieces read and change
            try:
                score_user(
                    self.config,
                    step.index,
                    user,
                    step.learners,
                    prepared,
                    inferred,
                    recs,
                    versions,
                    mine,
                    said=said,
                    btyd=btyd,
                )
            finally:
                user.scores = scores
            stage = "encode"
            payloads = [orjson.dumps(value) for _topic, _key, value in mine.messages]
        except Exception as exc:
            if step.after_labels is not None:
                _commit(scores, step.after_labels)
                result.changed.append(user)
            result.failed.append(
                ScoreFailure(
                    user.user_id, user.partition, stage, exc, step.after_labels is not None
                )
            )
            return
        _commit(scores, work)
        result.changed.append(user)
        result.messages += mine.messages
        result.payloads += payloads
        result.due += mine.due

    def deliver(
        self, users: list[UserInput], learners_of: Callable[[int], Learners]
    ) -> ScoreResult:
        """Only the labels event time reveals for ``users`` (at their ``at_ms``, no events):
        the learners learn them and the delivered predictions leave the users' scoring states;
        nothing is predicted or published. A user whose step raises is a ``ScoreFailure``
        and keeps their state; the others go on."""
        result = ScoreResult()
        for index, user in enumerate(users):
            try:
                learners = learners_of(user.partition)
            except Exception as exc:
                result.failed.append(ScoreFailure(user.user_id, user.partition, "labels", exc))
                continue
            step = self._labels(index, user, learners, result)
            if step is not None and step.after_labels is not None:
                _commit(user.scores, step.work)
                result.changed.append(user)
                result.partitions.add(user.partition)
        return result

    def score(
        self,
        users: list[UserInput],
        learners_of: Callable[[int], Learners],
        churn_only: bool,
        *,
        strict: bool = True,
    ) -> ScoreResult:
        """``prepare``, ``infer_isolated`` and ``finish`` in one go (offline evaluation). With
        ``strict``, a user who could not be scored raises ``ScoringFailed`` once the others
        are done: an offline figure must not silently leave users out."""
        if not users:
            return ScoreResult()
        prepared, inferred = self.infer_isolated(self.prepare(users, learners_of, churn_only))
        result = self.finish(prepared, inferred, learners_of)
        if strict and result.failed:
            raise ScoringFailed(result.failed) from result.failed[0].error
        return result


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[Any], np.ndarray], arg: Any) -> np.ndarray:
        started = time.perf_counter()
        try:
            return fn(arg)
        finally:
            self.seconds[name] = time.perf_counter() - started


def _working_copy(scores: UserScores) -> UserScores:
    """A copy of a user's scoring state that scoring may change without touching ``scores``:
    the containers scoring changes in place are copied, the rest is replaced, never changed.

    Pending churn entries are shared, not copied (a user holds a dozen of them): they are first
    brought to their object form in ``scores`` itself (a change of form only, what
    ``add_churn_prediction`` does anyway), and the one change made to them in place, the mark
    that the user ordered within their horizon, is a fact about an event already applied to the
    features that would not be seen again: it is kept even when the user's step fails.
    """
    pending = scores.churn_pending
    for n, entry in enumerate(pending):
        if not isinstance(entry, PendingChurn):
            pending[n] = PendingChurn.from_list(entry)
    return dataclasses.replace(scores, latest=dict(scores.latest), churn_pending=list(pending))


def _commit(target: UserScores, source: UserScores) -> None:
    """Write a working copy back into the user's own object (callers hold that one)."""
    for spec in dataclasses.fields(target):
        setattr(target, spec.name, getattr(source, spec.name))


def _feed(model: Model, **arrays: np.ndarray | None) -> dict[str, np.ndarray]:
    """Map our arrays onto the model's declared inputs: features first, the int sequence next."""
    feed: dict[str, np.ndarray] = {}
    for spec in model.inputs:
        if len(spec.shape) == 2 and spec.dtype.kind == "f":
            feed[spec.name] = arrays["features"]  # type: ignore[assignment]
        else:
            feed[spec.name] = arrays["sequence"]  # type: ignore[assignment]
    return feed
