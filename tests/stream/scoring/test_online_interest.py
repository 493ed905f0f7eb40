"""InterestBlend: prior before labels, a pointwise learner after, normalised top-k."""

from __future__ import annotations

import copy
import math
import pickle
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.scoring.online_interest import InterestBlend, prior_score

unit = st.floats(0, 1)
features = st.fixed_dictionaries(
    {
        "onnx_p": unit,
        "affinity_share": unit,
        "recent_share": unit,
        "is_last": st.sampled_from([0.0, 1.0]),
    }
)
candidate_sets = st.dictionaries(st.sampled_from(list("abcdefghij")), features, max_size=10)


def _user(rng: random.Random, n: int = 8) -> tuple[dict[str, dict[str, float]], str]:
    """A user whose next category is the last one visited; ONNX points elsewhere."""
    cats = [f"c{i}" for i in range(n)]
    last = rng.choice(cats)
    decoy = rng.choice([c for c in cats if c != last])
    cands = {
        c: {
            "onnx_p": 0.6 if c == decoy else 0.4 / (n - 1),
            "affinity_share": 1.0 / n,
            "recent_share": 0.5 if c == last else 0.5 / (n - 1),
            "is_last": float(c == last),
        }
        for c in cats
    }
    return cands, last


class _CountingModel:
    def __init__(self, model):
        self.model = model
        self.calls: list[bool] = []

    def learn_one(self, x, y):
        self.calls.append(y)
        self.model.learn_one(x, y)

    def predict_proba_one(self, x):
        return self.model.predict_proba_one(x)


@settings(max_examples=60, deadline=None)
@given(candidate_sets, st.integers(0, 12), st.booleans())
def test_rank_is_a_normalised_top_k(cands, k, trained):
    blend = _TRAINED if trained else InterestBlend()
    ranked = blend.rank(cands, k)
    assert len(ranked) == min(k, len(cands))
    assert len({c for c, _ in ranked}) == len(ranked) and all(c in cands for c, _ in ranked)
    probs = [p for _, p in ranked]
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert sum(probs) <= 1.0 + 1e-9
    if k >= len(cands) and cands:
        assert abs(sum(probs) - 1.0) < 1e-9


def test_prior_before_min_labels():
    blend = InterestBlend()
    cands = {
        "a": {"onnx_p": 0.5, "affinity_share": 0.1},
        "b": {"onnx_p": 0.2, "affinity_share": 0.6},
        "c": {"onnx_p": 0.0, "affinity_share": 0.0},
    }
    ranked = blend.rank(cands, 3)
    total = sum(prior_score(f) for f in cands.values())
    assert ranked == [("b", 0.4 / total), ("a", 0.3 / total), ("c", 0.0)]
    zeros = {"x": {}, "y": {}}
    assert blend.rank(zeros, 2) == [("x", 0.5), ("y", 0.5)]


def test_learns_to_beat_the_prior():
    rng = random.Random(0)
    blend = InterestBlend(min_labels=200)
    hits_prior = hits_learned = 0
    for i in range(600):
        cands, nxt = _user(rng)
        ranked = [c for c, _ in blend.rank(cands, 1)]
        blend.record_hit(ranked, nxt)
        if i < 200:
            hits_prior += nxt in ranked
        elif i >= 400:
            hits_learned += nxt in ranked
        blend.learn(cands, nxt)
    assert hits_prior < 20 and hits_learned > 190
    assert 0.5 < blend.metrics()["hit_rate_at_k"] < 0.75  # ~400 of 600


def test_negatives_are_subsampled():
    blend = InterestBlend(max_negatives=5)
    blend._model = _CountingModel(blend._model)
    cands, nxt = _user(random.Random(1), n=20)
    blend.learn(cands, nxt)
    assert blend._model.calls == [True] + [False] * 5
    few, nxt = _user(random.Random(1), n=3)
    blend.learn(few, nxt)
    assert blend._model.calls[6:] == [True, False, False]
    assert blend.labels_seen == 2


def test_a_label_outside_the_candidates_is_skipped():
    blend = InterestBlend()
    blend._model = _CountingModel(blend._model)
    cands, _ = _user(random.Random(2))
    blend.learn(cands, "never-ranked")
    assert blend._model.calls == [] and blend.labels_seen == 0


def test_hit_rate():
    blend = InterestBlend(window=3)
    assert math.isnan(blend.metrics()["hit_rate_at_k"])  # no figure before the first hit
    for ranked, nxt in [(["a"], "b"), (["a", "b"], "b"), (["b"], "b"), ([], "b")]:
        blend.record_hit(ranked, nxt)
    assert abs(blend.metrics()["hit_rate_at_k"] - 2 / 3) < 1e-12  # the last 3


def test_inputs_not_mutated_and_pickle_round_trip():
    rng = random.Random(3)
    blend = InterestBlend(min_labels=10)
    for _ in range(30):
        cands, nxt = _user(rng)
        before = copy.deepcopy(cands)
        blend.rank(cands, 3)
        blend.learn(cands, nxt)
        assert cands == before
    clone = pickle.loads(pickle.dumps(blend))
    for _ in range(30):
        cands, nxt = _user(rng)
        assert clone.rank(cands, 3) == blend.rank(cands, 3)
        clone.learn(cands, nxt)
        blend.learn(cands, nxt)
    assert clone.rank(cands, 8) == blend.rank(cands, 8)


def _trained() -> InterestBlend:
    rng = random.Random(9)
    blend = InterestBlend(min_labels=50)
    for _ in range(60):
        blend.learn(*_user(rng))
    return blend


_TRAINED = _trained()
