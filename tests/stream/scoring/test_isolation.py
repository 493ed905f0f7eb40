"""A user is the unit of failure, not the batch (issue 10, case 6).

The real ``Scorer`` with the shipped ONNX models scores batches in which one user's data makes
their scoring raise, at each step: preparing features, inferring, delivering labels, scoring,
encoding the messages. That user loses their scores of the batch and nothing else: the others
are scored and published, the poisoned user's scoring state is left as it was (or with only the
labels the learners already learned consumed, so a retry never learns them twice), and the
worker's ``Serving`` counts one error per failed user in ``shopscore_scoring_errors_total``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import pytest

from stream.contract.events import CartChange, Click, Event, Order, OrderLine
from stream.errors import ModelError
from stream.features import UserState, apply_event
from stream.models.registry import load_models
from stream.pipeline.failures import FailureLog
from stream.pipeline.learners import PartitionLearners
from stream.pipeline.records import BatchOutput
from stream.pipeline.scoring import ScoringStep
from stream.pipeline.stores import BatchView, Stores
from stream.scoring.engine import DAY_MS, Scorer, ScoringConfig, ScoringFailed, UserInput
from stream.scoring.state import Learners, UserScores
from stream.settings import Settings
from stream.worker.metrics import Metrics

T0 = 1_767_225_600_000
CONFIG = ScoringConfig()
FEATURES = CONFIG.features
TOPICS = {"scores.churn", "scores.interest", "scores.purchase_power", "recs.cart"}


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return load_models()


def _events(user_id: str, ts: int) -> list[Event]:
    return [
        Click(f"{user_id}-1", user_id, ts, "i1", "books", 12.0),
        CartChange(f"{user_id}-2", user_id, ts + 1_000, "i1", "add", "books", 12.0),
        CartChange(f"{user_id}-3", user_id, ts + 2_000, "i2", "add", "music", 8.0),
        Order(f"{user_id}-4", user_id, ts + 3_000, "o1", (OrderLine("i1", 12.0, 1),), 12.0),
        CartChange(f"{user_id}-5", user_id, ts + 4_000, "i3", "add", "books", 5.0),
    ]


def _user(user_id: str, scores: UserScores | None = None, ts: int = T0) -> UserInput:
    state = UserState(user_id)
    events = _events(user_id, ts)
    for event in events:
        apply_event(state, event, FEATURES)
    assert state.max_ts is not None
    return UserInput(
        user_id, 0, state, scores or UserScores(), events, state.max_ts, events[-1].event_id
    )


def _good(n: int = 5) -> list[UserInput]:
    return [_user(f"u{k}") for k in range(n)]


def _scored(result: Any) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for topic, key, _value in result.messages:
        out.setdefault(key, set()).add(topic)
    return out


def _assert_others_scored(result: Any, others: list[UserInput], bad: str) -> None:
    scored = _scored(result)
    assert bad not in scored
    for user in others:
        assert scored[user.user_id] >= TOPICS, (user.user_id, scored.get(user.user_id))
        assert set(user.scores.latest) >= TOPICS
    assert len(result.payloads) == len(result.messages)


def _due_label(vector_len: int = 45) -> list[Any]:
    """A churn prediction 40 days before T0: its 30-day horizon has passed, a label is due."""
    return [T0 - 40 * DAY_MS, [0.5] * vector_len, 0.3]


def test_a_forged_pending_label_costs_only_its_user(models) -> None:
    scorer = Scorer(models, CONFIG)
    learners = Learners(seed=0)
    forged = UserScores(churn_pending=[_due_label(vector_len=2)])  # too short a vector
    bad = _user("poisoned", forged)
    good = _good()
    users = [good[0], good[1], bad, *good[2:]]
    result = scorer.score(users, lambda _p: learners, False, strict=False)
    [failure] = result.failed
    assert (failure.user_id, failure.stage, failure.committed) == ("poisoned", "labels", False)
    assert isinstance(failure.error, IndexError)
    _assert_others_scored(result, good, "poisoned")
    # Nothing of the batch reached the poisoned user's state.
    assert forged.latest == {} and [list(e) for e in forged.churn_pending] == [
        [*_due_label(2), False, None, None]
    ]
    assert forged.interest_pending is None and forged.offer_pending is None
    assert learners.churn.labels_seen == 0
    # Offline evaluation (strict, the default) still refuses to leave users out silently.
    with pytest.raises(ScoringFailed, match="'again' at labels"):
        scorer.score(
            [_user("again", UserScores(churn_pending=[_due_label(2)]))], lambda _p: learners, True
        )


def test_labels_learned_before_a_failure_are_consumed_and_never_learned_twice(models) -> None:
    scorer = Scorer(models, CONFIG)
    learners = Learners(seed=0)
    forged = UserScores(churn_pending=[_due_label()], last_offer_ts="yesterday")  # type: ignore[arg-type]
    good = _good(3)
    result = scorer.score(
        [*good, _user("poisoned", forged)], lambda _p: learners, False, strict=False
    )
    [failure] = result.failed
    assert (failure.user_id, failure.stage, failure.committed) == ("poisoned", "score", True)
    assert isinstance(failure.error, TypeError)  # at_ms - "yesterday", choosing an offer
    _assert_others_scored(result, good, "poisoned")
    assert learners.churn.labels_seen == 1 and result.labels["churn"] == 1
    # The delivered label left the state; the failed step's own changes did not land.
    assert forged.churn_pending == [] and forged.latest == {}
    assert forged.interest_pending is None
    # A retry (the user's next event, or a redelivery) fails again, but learns nothing again.
    retry = _user("poisoned", forged, ts=T0 + 60_000)
    result = scorer.score([retry, _user("u9")], lambda _p: learners, False, strict=False)
    assert [f.user_id for f in result.failed] == ["poisoned"]
    assert learners.churn.labels_seen == 1
    assert "u9" in _scored(result)


def test_labels_delivered_without_a_score_cost_only_a_forged_users_labels(models) -> None:
    """``Scorer.deliver`` (due labels of idle users who are not re-scored) isolates users as
    scoring does: the forged one keeps their state, the others' labels are learned."""
    scorer = Scorer(models, CONFIG)
    learners = Learners(seed=0)
    forged = UserScores(churn_pending=[_due_label(vector_len=2)])
    idle = [
        UserInput(
            f"u{k}",
            0,
            UserState(f"u{k}"),
            UserScores(churn_pending=[_due_label()]),
            [],
            T0,
            "clock",
        )
        for k in range(3)
    ]
    bad = UserInput("poisoned", 0, UserState("poisoned"), forged, [], T0, "clock")
    result = scorer.deliver([idle[0], bad, *idle[1:]], lambda _p: learners)
    [failure] = result.failed
    assert (failure.user_id, failure.stage, failure.committed) == ("poisoned", "labels", False)
    assert [user.user_id for user in result.changed] == ["u0", "u1", "u2"]
    assert result.labels == {"churn": 3} and learners.churn.labels_seen == 3
    assert all(user.scores.churn_pending == [] for user in idle) and not result.messages
    assert len(forged.churn_pending) == 1


def test_a_state_that_cannot_be_read_fails_in_prepare_alone(models) -> None:
    scorer = Scorer(models, CONFIG)
    learners = Learners(seed=0)
    bad = _user("poisoned")
    bad.state.tail.append("not an event")  # type: ignore[arg-type]
    bad.state.view = None
    good = _good(4)
    result = scorer.score([bad, *good], lambda _p: learners, False, strict=False)
    assert [(f.user_id, f.stage) for f in result.failed] == [("poisoned", "prepare")]
    _assert_others_scored(result, good, "poisoned")
    assert result.changed == good


def test_a_message_that_cannot_be_encoded_costs_only_its_user(models) -> None:
    scorer = Scorer(models, CONFIG)
    learners = Learners(seed=0)
    good = [_user(f"u{k}") for k in range(3)]
    clock = [UserInput(u.user_id, 0, u.state, u.scores, [], T0 + DAY_MS, "clock") for u in good]
    huge = _user("poisoned")
    # A stamp past 64 bits (orjson refuses it): the failure is in encoding, after scoring.
    clock.insert(1, UserInput("poisoned", 0, huge.state, huge.scores, [], 2**70, "clock"))
    result = scorer.score(clock, lambda _p: learners, True, strict=False)
    [failure] = result.failed
    assert (failure.user_id, failure.stage, failure.committed) == ("poisoned", "encode", False)
    assert huge.scores.churn_pending == [] and huge.scores.latest == {}
    assert sorted(_scored(result)) == ["u0", "u1", "u2"]
    assert all(u.scores.latest["scores.churn"]["trigger"] == "clock" for u in good)


class _Counting:
    """A real model that counts its calls and, like a runtime refusing an input, raises on a
    batch holding a non-finite feature row."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def predict(self, inputs: Any) -> np.ndarray:
        features = inputs if isinstance(inputs, np.ndarray) else inputs.get("features")
        self.calls.append(len(features) if features is not None else -1)
        if features is not None and not np.isfinite(features).all():
            raise ModelError("non-finite input")
        return self.model.predict(inputs)


def test_one_inference_per_model_per_batch_and_per_user_only_when_the_batch_fails(models) -> None:
    counted = {name: _Counting(model) for name, model in models.items()}
    scorer = Scorer(counted, CONFIG)  # type: ignore[arg-type]
    learners = Learners(seed=0)
    result = scorer.score(_good(6), lambda _p: learners, False)
    assert {name: m.calls for name, m in counted.items()} == {
        "churn": [6],
        "purchase_power": [6],
        "interest": [6],
        "cart_recs": [-1],  # candidate rows of every cart, one call
    }
    for m in counted.values():
        m.calls.clear()

    bad = _user("poisoned")
    bad.state.base.totals[-1] = float("nan")  # a non-finite total: non-finite features
    bad.state.view = None
    good = _good(4)
    result = scorer.score([*good[:2], bad, *good[2:]], lambda _p: learners, False, strict=False)
    assert [(f.user_id, f.stage) for f in result.failed] == [("poisoned", "infer")]
    assert counted["churn"].calls == [5, 1, 1, 1, 1, 1]  # the batch, then each user alone
    _assert_others_scored(result, good, "poisoned")
    assert bad.scores.latest == {}


# -- the pipeline's scoring step: writes, publishes and counts per user ------------------------


def _scoring() -> ScoringStep:
    settings = Settings()
    learners = PartitionLearners({}, settings.state_secret)
    return ScoringStep(Scorer(load_models(settings.model_dir), settings.scoring_config()), learners)


def test_the_scoring_step_counts_failed_users_and_publishes_and_writes_everyone_else(
    caplog,
) -> None:
    step = _scoring()
    view, out = BatchView(Stores.in_memory()), BatchOutput()
    good = _good(4)
    forged = UserScores(churn_pending=[_due_label(2)])
    broken = _user("broken")
    broken.state.tail.append("not an event")  # type: ignore[arg-type]
    broken.state.view = None
    users = [good[0], _user("poisoned", forged), *good[1:3], broken, good[3]]
    with caplog.at_level(logging.ERROR, logger="shopscore"):
        result = asyncio.run(step.score(users, view, out, churn_only=False, arrived={"u0": 0.0}))
    assert {f.user_id for f in result.failed} == {"poisoned", "broken"}
    metrics = Metrics()
    metrics.record(out.counts)
    assert metrics.registry.get_sample_value("shopscore_scoring_errors_total") == 2
    sent = [(record.topic, record.key.decode()) for record in out.records]
    assert {key for _t, key in sent} == {u.user_id for u in good}
    assert set(sent) >= {(t, u.user_id) for t in TOPICS for u in good}
    written = {w.key for w in view.writes() if w.table == "scores"}
    assert written == {u.user_id.encode() for u in good}  # nothing written for the failed
    [line] = [r for r in caplog.records if "scoring failed" in r.getMessage()]
    assert "2 of 6 users" in line.getMessage() and "'poisoned' at labels" in line.getMessage()
    assert line.exc_info is not None


def test_failure_log_is_bounded_one_line_per_interval_and_a_traceback_now_and_then(caplog) -> None:
    now = [0.0]
    flog = FailureLog(
        logging.getLogger("shopscore.test"), every_s=10, traceback_every_s=60, clock=lambda: now[0]
    )
    scorer_failure = _failure("u1")
    with caplog.at_level(logging.ERROR, logger="shopscore.test"):
        for step in range(200):  # a poisoned user in every batch, 10 batches a second
            now[0] = step / 10
            flog.report([scorer_failure], 100)
    lines = [r for r in caplog.records if r.name == "shopscore.test"]
    assert len(lines) == 2  # at 0 s and 10 s
    assert [r.exc_info is not None for r in lines] == [True, False]
    assert "99 more users in 99 batches" in lines[1].getMessage()


def _failure(user_id: str) -> Any:
    from stream.scoring.engine import ScoreFailure

    try:
        raise KeyError("books")
    except KeyError as exc:
        return ScoreFailure(user_id, 0, "prepare", exc)
