"""Learner checkpoints: reading one never runs code, a configured secret makes forging one
impossible, and what loads has the shape of real learners.

The ``learners`` changelog is writable by anyone who can produce to the broker; before this, a
record whose pickle ``__reduce__``d to ``os.system`` ran as the worker at the next restart.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import io
import logging
import os
import pickle
import pickletools
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offline_train import online_eval
from stream.contract.events import CartChange, Click, Order, OrderLine
from stream.errors import CorruptState
from stream.models.registry import load_models
from stream.pipeline import InputRecord, Pipeline, PipelineConfig
from stream.pipeline.learners import PartitionLearners
from stream.pipeline.stores import BatchView, Stores
from stream.scoring import chunked, safe_pickle
from stream.scoring.engine import DAY_MS, ScoringConfig
from stream.scoring.offers import DEFAULT_ARMS
from stream.scoring.state import Learners
from stream.tools.generator import GeneratorConfig, write_log
from stream.worker.metrics import Metrics

T0 = 1_767_225_600_000
SECRET = "correct horse battery staple"
HEADER = b"SSLEARN2U"  # the unsigned envelope


# -- learners that have learned a lot -----------------------------------------------------------


def trained_learners(seed: int = 3, labels: int = 2_400) -> Learners:
    """Every learner driven through the calls the engine makes, long enough for every rolling
    window (1,000 labels) to wrap, ADWIN to see a change, each bandit arm to be rewarded,
    co-occurrence neighbour lists to overflow and be pruned, and the pipeline caches to fill."""
    rng = random.Random(seed)
    learners = Learners(seed=seed)
    cats = ["books", "toys", "home", "garden", "food", "tech", "art", "sport"]
    for i in range(labels):
        ts = T0 + i * 600_000
        x = {"log_orders": rng.random() * 3, "hours_idle": rng.random() * 9, "cart": rng.random()}
        changed = i > labels // 2  # the shop changes: the ONNX model starts being wrong
        y = (x["hours_idle"] > 4.5) != changed
        p_onnx = min(max((0.8 if x["hours_idle"] > 4.5 else 0.2) + rng.gauss(0, 0.05), 0.01), 0.99)
        learners.churn.predict(x, p_onnx)
        learners.churn.learn(x, p_onnx, y)
        candidates = {
            c: {
                "onnx_p": rng.random(),
                "affinity_share": rng.random(),
                "recent_share": rng.random(),
                "is_last": float(rng.random() < 0.2),
            }
            for c in rng.sample(cats, rng.randint(2, len(cats)))
        }
        ranked = [c for c, _p in learners.interest.rank(candidates, 3)]
        nxt = rng.choice([*candidates, "elsewhere"])
        learners.interest.record_hit(ranked, nxt)
        learners.interest.learn(candidates, nxt)
        basket = [f"i{rng.randrange(400)}" for _ in range(rng.randint(1, 6))]
        if i % 50 == 0:
            basket = [f"i{rng.randrange(400)}" for _ in range(60)]  # a big order: pruning
        learners.cooccurrence.update(basket, ts)
        learners.cooccurrence.update([*basket[:2], "extra"], ts, added=["extra"])
        for item in basket[:3]:
            category = cats[int(item[1:]) % len(cats)]  # an item keeps its category
            learners.popularity.observe(CartChange(f"a{i}{item}", "u", ts, item, "add", category))
            learners.popularity.observe(Click(f"c{i}{item}", "u", ts, item, category))
        lines = tuple(OrderLine(item, 10.0, 1, cats[int(item[1:]) % 8]) for item in basket[:2])
        learners.popularity.observe(Order(f"o{i}", "u", ts, f"o{i}", lines, 20.0))
        context = {"churn": rng.random(), "log_spend": rng.random() * 5, "bias": 1.0}
        arm, _propensity = learners.offers.choose(context)
        learners.offers.learn(context, arm, float(rng.random() < 0.3) - learners.offers.cost(arm))
        learners.tiers.update(rng.expovariate(0.02))
        learners.dirty += 1
    learners.churn.metrics()
    learners.interest.metrics()
    return learners


@pytest.fixture(scope="module")
def trained() -> Learners:
    learners = trained_learners()
    # It really learned a lot: the test below is only as good as this coverage.
    assert learners.churn.labels_seen > 2 * 1000 and learners.churn.drifts >= 1
    assert learners.interest.labels_seen > 1000
    assert learners.tiers.n > 1000
    assert set(learners.offers._bandit._bayes_lin_regs) == set(DEFAULT_ARMS)
    assert max(len(nb) for nb in learners.cooccurrence._nb.values()) == 50  # pruned at the cap
    assert learners.churn._model._last_step_cached is not None  # pipeline caches filled
    return learners


@pytest.fixture(scope="module")
def engine_trained(tmp_path_factory: pytest.TempPathFactory) -> Learners:
    """Learners trained by the real engine (ONNX models, pending labels, offers, recs) over a
    generated log, exactly as a single-partition worker trains them."""
    log = tmp_path_factory.mktemp("engine") / "log.jsonl"
    write_log(GeneratorConfig(users=250, days=60, seed=3, change_day=20), log)
    made: list[Learners] = []

    class Capture(Learners):
        def __init__(self, seed: int = 0) -> None:
            super().__init__(seed)
            made.append(self)

    original = online_eval.Learners
    online_eval.Learners = Capture  # type: ignore[misc]
    try:
        run = online_eval.evaluate_log(
            online_eval.clean_log(log),
            load_models(),
            config=ScoringConfig(churn_horizon_ms=14 * DAY_MS),
            batch_size=200,
            churn_only=False,
        )
    finally:
        online_eval.Learners = original  # type: ignore[misc]
    assert run.labels["churn"] > 1000 and run.labels["interest"] > 1000 and run.labels["offers"]
    (captured,) = made
    learners = Learners.__new__(Learners)  # the captured one's class is the test's subclass
    learners.__dict__.update(captured.__dict__)
    return learners


def globals_named(data: bytes) -> set[tuple[str, str]]:
    """Every (module, name) a pickle imports, read off its opcodes (``pickletools.genops``):
    ``GLOBAL``/``INST`` carry it, ``STACK_GLOBAL`` takes the last two strings pushed (directly
    or from the memo)."""
    found: set[tuple[str, str]] = set()
    memo: list[Any] = []
    pushed: list[Any] = []  # what the last opcodes pushed, for STACK_GLOBAL
    strings = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in ("GLOBAL", "INST"):
            module, _, attr = arg.partition(" ")
            found.add((module, attr))
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            found.add((pushed[-2], pushed[-1]))
            pushed.append(None)
        elif name in strings:
            pushed.append(arg)
        elif name == "MEMOIZE":
            memo.append(pushed[-1] if pushed else None)
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo[int(arg)] if int(arg) < len(memo) else None)
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            while len(memo) <= int(arg):
                memo.append(None)
            memo[int(arg)] = pushed[-1] if pushed else None
        else:
            pushed.append(None)
    assert all(isinstance(m, str) and isinstance(n, str) for m, n in found), found
    return found


# -- round trips ----------------------------------------------------------------------------------


def _same_as_an_unrestricted_load(blob: bytes, head: int) -> None:
    """What the restricted unpickler builds re-pickles to exactly what ``pickle.loads`` builds
    (a byte-for-byte round trip of the object graph), and is a fixpoint of the format."""
    restored = Learners.from_bytes(blob, SECRET if blob[8:9] == b"S" else None)
    unrestricted = pickle.loads(blob[head:])
    secret = SECRET if blob[8:9] == b"S" else None
    expected = Learners.__new__(Learners)
    expected.__dict__.update(unrestricted[1])
    assert restored.to_bytes(secret) == expected.to_bytes(secret)
    again = restored.to_bytes(secret)
    assert Learners.from_bytes(again, secret).to_bytes(secret) == again


@pytest.mark.parametrize("which", ["trained", "engine_trained"])
def test_a_trained_checkpoint_names_only_allowlisted_globals(which, request) -> None:
    learners = request.getfixturevalue(which)
    named = globals_named(learners.to_bytes()[len(HEADER) :])
    assert named <= safe_pickle.ALLOWED, sorted(named - safe_pickle.ALLOWED)


def test_the_allowlist_is_no_larger_than_trained_learners_need(trained, engine_trained) -> None:
    named = globals_named(trained.to_bytes()[len(HEADER) :]) | globals_named(
        engine_trained.to_bytes()[len(HEADER) :]
    )
    assert safe_pickle.ALLOWED - named == {("numpy.core.numeric", "_frombuffer")}  # numpy 1.x
    assert set(safe_pickle.allowed()) == safe_pickle.ALLOWED  # every entry resolves


@pytest.mark.parametrize("which", ["trained", "engine_trained"])
@pytest.mark.parametrize("secret", [None, SECRET])
def test_a_trained_checkpoint_round_trips_exactly(which, secret, request) -> None:
    learners = request.getfixturevalue(which)
    blob = learners.to_bytes(secret)
    _same_as_an_unrestricted_load(blob, len(HEADER) + (32 if secret else 0))
    restored = Learners.from_bytes(blob, secret)
    # It predicts and goes on learning exactly like the original.
    twin = pickle.loads(pickle.dumps(learners))
    x = {"log_orders": 1.0, "hours_idle": 3.0, "cart": 0.5}
    for model in (restored, twin):
        model.churn.learn(x, 0.3, True)
        model.tiers.update(42.0)
    assert restored.churn.predict(x, 0.4) == twin.churn.predict(x, 0.4)
    assert restored.churn.metrics() == twin.churn.metrics()
    assert restored.interest.metrics() == twin.interest.metrics()
    context = {"churn": 0.5, "log_spend": 1.0, "bias": 1.0}
    assert restored.offers.upper_bounds(context) == twin.offers.upper_bounds(context)
    assert restored.tiers.thresholds == twin.tiers.thresholds
    assert restored.cooccurrence.to_bytes() == twin.cooccurrence.to_bytes()
    assert restored.popularity.top(10) == twin.popularity.top(10)


def test_a_checkpoint_of_the_format_before_the_envelope_still_reads(trained) -> None:
    legacy = pickle.dumps((1, trained.__dict__), protocol=pickle.HIGHEST_PROTOCOL)
    restored = Learners.from_bytes(legacy)
    assert restored.churn.labels_seen == trained.churn.labels_seen
    assert restored.to_bytes()[: len(HEADER)] == HEADER  # re-written in the new format
    assert restored.to_bytes() == Learners.from_bytes(trained.to_bytes()).to_bytes()


def test_the_envelope_marks_the_version_and_the_signature() -> None:
    fresh = Learners(seed=1)
    assert fresh.to_bytes().startswith(b"SSLEARN2U\x80")
    signed = fresh.to_bytes(SECRET)
    assert signed.startswith(b"SSLEARN2S") and signed[9 + 32 : 9 + 33] == b"\x80"


# -- the secret -------------------------------------------------------------------------------------


def test_with_a_secret_only_a_checkpoint_signed_with_it_is_read(trained) -> None:
    signed = trained.to_bytes(SECRET)
    assert Learners.from_bytes(signed, SECRET).churn.labels_seen == trained.churn.labels_seen
    refused = {
        "another secret": (signed, "another secret"),
        "unsigned": (trained.to_bytes(), SECRET),
        "old format, unsigned": (pickle.dumps((1, trained.__dict__), protocol=5), SECRET),
        "body tampered": (signed[:-40] + bytes([signed[-40] ^ 1]) + signed[-39:], SECRET),
        "signature tampered": (signed[:12] + bytes([signed[12] ^ 1]) + signed[13:], SECRET),
        "mode flipped": (b"SSLEARN2U" + signed[9:], SECRET),
        "signature cut": (signed[:20], SECRET),
    }
    for name, (data, secret) in refused.items():
        with pytest.raises(CorruptState):
            Learners.from_bytes(data, secret)
            pytest.fail(f"{name} was read")


def test_without_a_secret_a_signed_checkpoint_is_still_read_restricted(trained) -> None:
    restored = Learners.from_bytes(trained.to_bytes(SECRET))
    assert restored.churn.labels_seen == trained.churn.labels_seen


def test_a_signed_forgery_cannot_be_made_without_the_secret(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    body = pickle.dumps((2, {"churn": _Reduce(os.system, (f"touch {marker}",))}))
    head = b"SSLEARN2S"
    for forged in (head + b"\0" * 32 + body, head + body[:32] + body):
        with pytest.raises(CorruptState, match="signature"):
            Learners.from_bytes(forged, SECRET)
    assert not marker.exists()


# -- code execution ---------------------------------------------------------------------------------


class _Reduce:
    """Pickles as ``func(*args)``: what an attacker writes into the changelog."""

    def __init__(self, func: Any, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _op_global(module: str, name: str) -> bytes:
    return b"c%s\n%s\n" % (module.encode(), name.encode())


def _op_str(text: str) -> bytes:
    return b"X" + len(text.encode()).to_bytes(4, "little") + text.encode()


def _payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that run ``touch marker`` (or worse) when a plain ``pickle.loads`` reads them."""
    touch = f"touch {marker}"
    py = f"open({str(marker)!r}, 'w').close()"
    via_getattr = (  # getattr(__import__('os'), 'system')('touch ...')
        _op_global("builtins", "getattr")
        + b"("
        + _op_global("builtins", "__import__")
        + b"("
        + _op_str("os")
        + b"tR"
        + _op_str("system")
        + b"tR("
        + _op_str(touch)
        + b"tR."
    )
    partial_of_system = (  # functools.partial(os.system, 'touch ...')()
        _op_global("functools", "partial")
        + b"("
        + _op_global("os", "system")
        + _op_str(touch)
        + b"tR)R."
    )
    return {
        "os.system": pickle.dumps(_Reduce(os.system, (touch,))),
        "os.system in a learners record": pickle.dumps(
            (2, {**Learners().__dict__, "tiers": _Reduce(os.system, (touch,))})
        ),
        "posix.system by name": b"\x80\x02"
        + _op_global("posix", "system")
        + b"("
        + _op_str(touch)
        + b"tR.",
        "builtins.eval": pickle.dumps(_Reduce(eval, (py,))),
        "builtins.exec": pickle.dumps(_Reduce(exec, (py,))),
        "builtins.compile": pickle.dumps(_Reduce(compile, (py, "x", "exec"))),
        "builtins.open": pickle.dumps(_Reduce(open, (str(marker), "w"))),
        "builtins.getattr(__import__)": b"\x80\x02" + via_getattr,
        "subprocess.Popen": pickle.dumps(_Reduce(subprocess.Popen, (["touch", str(marker)],))),
        "subprocess.call": pickle.dumps(_Reduce(subprocess.call, (["touch", str(marker)],))),
        "os.popen": pickle.dumps(_Reduce(os.popen, (touch,))),
        "functools.partial(os.system)": b"\x80\x02" + partial_of_system,
        "importlib.import_module": b"\x80\x02"
        + _op_global("importlib", "import_module")
        + b"("
        + _op_str("os")
        + b"tR.",
        "pickle.loads": pickle.dumps(
            _Reduce(pickle.loads, (pickle.dumps(_Reduce(os.system, (touch,))),))
        ),
        "codecs.decode": pickle.dumps(_Reduce(__import__("codecs").decode, (b"x", "hex"))),
        "operator.attrgetter": pickle.dumps(
            _Reduce(__import__("operator").attrgetter, ("system",))
        ),
        "sys.modules": b"\x80\x02" + _op_global("sys", "modules") + b".",
        "runpy": b"\x80\x02"
        + _op_global("runpy", "run_path")
        + b"("
        + _op_str(str(marker))
        + b"tR.",
        "copyreg._reconstructor": b"\x80\x02" + _op_global("copyreg", "_reconstructor") + b".",
        "INST opcode": b"(" + _op_str(touch)[0:0] + b"S'" + touch.encode() + b"'\nios\nsystem\n.",
        "a module-less builtin": b"\x80\x02" + _op_global("builtins", "__builtins__") + b".",
        "getattr of a class": b"\x80\x02"
        + _op_global("builtins", "getattr")
        + b"("
        + _op_global("random", "Random")
        + _op_str("__init__")
        + b"tR.",
        "getattr of a dunder": b"\x80\x02"
        + _op_global("builtins", "getattr")
        + b"("
        + _op_global("river.stats.mean", "Mean")
        + b")\x81"  # Mean.__new__(Mean): a River estimator
        + _op_str("__reduce_ex__")
        + b"tR.",
        "partial of a non-factory": b"\x80\x02"
        + _op_global("functools", "partial")
        + b"("
        + _op_global("random", "Random")
        + b"tR.",
        "partial with a callable argument": b"\x80\x02"
        + _op_global("functools", "partial")
        + b"("
        + _op_global("collections", "defaultdict")
        + _op_global("random", "Random")
        + b"tR.",
        "partial whose BUILD swaps its function": b"\x80\x02"
        + _op_global("functools", "partial")
        + b"("
        + _op_global("collections", "defaultdict")
        + b"tR("
        + _op_global("random", "Random")
        + b")}Ntb.",
        "an object dtype": b"\x80\x02"
        + _op_global("numpy", "dtype")
        + b"("
        + _op_str("O")
        + b"tR.",
    }


PAYLOAD_NAMES = sorted(_payloads(Path("/x")))


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
@pytest.mark.parametrize("envelope", ["unsigned", "old format", "chunked"])
def test_a_forged_checkpoint_never_runs_code(name: str, envelope: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[name]
    if envelope == "unsigned":
        data = HEADER + payload
    elif envelope == "old format":
        data = payload if payload[:1] == b"\x80" else b"\x80\x02" + payload
    else:  # as an attacker writes it to the changelog: P#<gen>#0 = zlib(pickle), P = header
        table = dict(chunked.split(b"0", HEADER + payload, generation=1))
        data = chunked.join(table.get, b"0")
    with pytest.raises(CorruptState):
        Learners.from_bytes(data)
    assert not marker.exists()


def test_the_payloads_are_live(tmp_path: Path) -> None:
    """The plain ``pickle.loads`` the worker used before runs them: the tests above test
    something."""
    marker = tmp_path / "pwned"
    pickle.loads(_payloads(marker)["os.system"])
    assert marker.exists()


def test_dangerous_names_are_not_allowlisted() -> None:
    for module, name in safe_pickle.ALLOWED:
        assert module.split(".")[0] not in {
            "os", "posix", "nt", "subprocess", "sys", "importlib", "operator", "codecs",
            "pickle", "_pickle", "copyreg", "runpy", "shutil", "socket", "io", "ctypes",
        }, (module, name)  # fmt: skip
        if module == "builtins":
            assert name in ("float", "getattr")
        if module == "functools":
            assert name == "partial"
    resolved = safe_pickle.allowed()
    # The two generic helpers River's pickles use resolve to narrowed stand-ins, not the real.
    assert resolved[("builtins", "getattr")] is not getattr
    assert resolved[("functools", "partial")] is not functools.partial
    for name in ("AdaptiveWindowing", "RsRollingROCAUC", "RsQuantile"):
        module = (
            "river._river_rust.drift" if name == "AdaptiveWindowing" else "river._river_rust.stats"
        )
        assert resolved[(module, name)].__module__ == "stream.scoring.safe_pickle"


def test_the_narrowed_helpers_still_build_what_river_pickles() -> None:
    from river.stats import Mean

    mean = Mean()
    clone = safe_pickle.allowed()[("builtins", "getattr")](mean, "clone")
    assert clone.__self__ is mean and isinstance(clone(), Mean)
    partial = safe_pickle.allowed()[("functools", "partial")](collections.defaultdict, float)
    assert isinstance(partial, functools.partial) and partial()["x"] == 0.0
    assert pickle.dumps(partial) == pickle.dumps(functools.partial(collections.defaultdict, float))


def test_numpy_arrays_are_plain_numbers_only() -> None:
    frombuffer = safe_pickle.allowed()[("numpy._core.numeric", "_frombuffer")]
    assert frombuffer(bytearray(16), np.dtype("f8"), (2,), "C").tolist() == [0.0, 0.0]
    for args in (
        (bytearray(16), np.dtype(object), (2,), "C"),  # pointers read from the bytes
        (bytearray(16), np.dtype([("a", "f8"), ("b", "O")]), (1,), "C"),
        (bytearray(16), np.dtype("f8"), (3,), "C"),  # a shape the buffer does not hold
        (bytearray(16), np.dtype("f8"), (2,), "K"),
        ("16 chars........", np.dtype("f8"), (2,), "C"),
        (bytearray(16), "f8", (2,), "C"),
    ):
        with pytest.raises(CorruptState):
            frombuffer(*args)
    for spec in ("O", "V8", "U3", "M8", "f8,O", 5):
        with pytest.raises(CorruptState):
            safe_pickle.allowed()[("numpy", "dtype")](spec, False, True)


def test_payloads_that_would_abort_or_exhaust_the_process_are_refused() -> None:
    """River's Rust types allocate what their arguments say, and a failed allocation aborts
    the process (no exception); River's Python classes build them in ``__init__``; the C
    unpickler sizes its memo to any index it is given. Run in a child (memory-capped) so a
    regression shows as a crash or a MemoryError, not as a host out of memory."""
    script = textwrap.dedent(
        """
        import pickle, resource
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
        from stream.errors import CorruptState
        from stream.scoring.state import Learners

        def call(opcode, module, name, *args):
            body = b"".join(pickle.dumps(a, protocol=2)[2:-1] for a in args)
            return b"\\x80\\x02c%s\\n%s\\n(%st%s." % (module.encode(), name.encode(), body, opcode)

        NEWOBJ, REDUCE = b"\\x81", b"R"
        cases = {
            "RsRollingROCAUC(1, 10**15)": call(
                NEWOBJ, "river._river_rust.stats", "RsRollingROCAUC", 1, 10**15),
            "AdaptiveWindowing(max_buckets=10**12)": call(
                NEWOBJ, "river._river_rust.drift", "AdaptiveWindowing", 0.002, 32, 10**12, 5, 10),
            "AdaptiveWindowing(0, 0, 0, 0)": call(
                NEWOBJ, "river._river_rust.drift", "AdaptiveWindowing", 0.002, 0, 0, 0, 0),
            "RollingROCAUC.__init__(10**15)": call(
                REDUCE, "river.metrics.rolling_roc_auc", "RollingROCAUC", 10**15),
            "ADWIN.__init__(max_buckets=10**12)": call(
                REDUCE, "river.drift.adwin", "ADWIN", 0.002, 32, 10**12),
            "a memo index of 10**9": b"\\x80\\x04Nr" + (10**9).to_bytes(4, "little") + b".",
        }
        for name, data in cases.items():
            try:
                Learners.from_bytes(b"SSLEARN2U" + data)
            except CorruptState as exc:
                print("refused:", name, "-", exc)
            else:
                raise SystemExit(f"accepted {name}")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("refused:") == 6, done.stdout
    assert "MemoryError" not in done.stdout, done.stdout  # refused before allocating
    assert "memo index past the memo" in done.stdout


def test_river_classes_are_rebuilt_never_called() -> None:
    from river.stats import Mean

    stand_in = safe_pickle.allowed()[("river.stats.mean", "Mean")]
    assert type(stand_in.__new__(stand_in)) is Mean  # NEWOBJ: the real class, no __init__
    with pytest.raises(CorruptState, match="may not call"):
        stand_in(5)  # REDUCE with arguments of the pickle's choosing


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x80\x04Nr\xff\xff\xff\x7f.", "memo index"),
        (b"\x80\x04Np999999999\n.", "not allowed"),  # PUT: a text memo index
        (b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"x.", "truncated"),
        (b"\x80\x04X\xff\xff\xff\x7fabc.", "truncated"),
        (b"\x80\x04N.trailing", "after the end"),
        (b"\x80\x04N", "no STOP"),
        (b"\x80\x04\x82\x01.", "not allowed"),  # EXT1: the copyreg extension registry
        (b"\x80\x04P1\n.", "not allowed"),  # a persistent id
        (b"\x80\x05\x97.", "not allowed"),  # an out-of-band buffer
        (b"\x80\x04\xfe.", "not allowed"),  # no such opcode
    ],
)
def test_the_opcode_scan_refuses_what_no_checkpoint_holds(data: bytes, why: str) -> None:
    with pytest.raises(CorruptState, match=why):
        safe_pickle.scan(data)
    with pytest.raises(CorruptState):
        Learners.from_bytes(HEADER + data)


def test_the_opcode_scan_passes_real_checkpoints(trained, engine_trained) -> None:
    for learners in (trained, engine_trained):
        safe_pickle.scan(learners.to_bytes()[len(HEADER) :])
        safe_pickle.scan(pickle.dumps((1, learners.__dict__), protocol=2))  # older protocols


# -- well-formed, but not learners ----------------------------------------------------------------


def _forge(learners: Learners, change) -> bytes:
    forged = pickle.loads(pickle.dumps(learners))
    change(forged)
    return HEADER + pickle.dumps((2, forged.__dict__), protocol=5)


FORGERIES = {
    "an attribute of another type": lambda f: setattr(f, "churn", f.interest),
    "a missing attribute": lambda f: delattr(f, "tiers"),
    "an extra attribute": lambda f: setattr(f, "extra", 1),
    "dirty not an int": lambda f: setattr(f, "dirty", "3"),
    "another function in the pipeline": lambda f: setattr(
        f.churn._model.steps["_clip_scaled"], "func", random.Random
    ),
    "a Rust state of another type": lambda f: setattr(
        f.churn._adwin, "_helper", f.tiers._quantiles[0]._quantile
    ),
    "an estimator where another belongs": lambda f: f.churn._model.steps.__setitem__(
        "LogisticRegression", f.churn._model.steps["LogisticRegression"].optimizer
    ),
    "a pipeline cache pointing elsewhere": lambda f: setattr(
        f.churn._model, "_last_step_cached", f.interest._model
    ),
    "a rolling window without its bound": lambda f: setattr(
        f.churn._loss_blend, "window", collections.deque(f.churn._loss_blend.window)
    ),
    "a bandit regression of another kind": lambda f: f.offers._bandit._bayes_lin_regs.__setitem__(
        "none", f.interest._model
    ),
    "a quantile list cut short": lambda f: f.tiers._quantiles.pop(),
    "co-occurrence parameters changed": lambda f: setattr(f.cooccurrence, "half_life_ms", 1),
    "co-occurrence times of the wrong type": lambda f: f.cooccurrence._last.__setitem__("i1", "x"),
    "co-occurrence scale far from its data": lambda f: setattr(f.cooccurrence, "_t0", 0),
    "popularity weights of the wrong type": lambda f: f.popularity._scaled.__setitem__("i1", "x"),
    "popularity scale far from now": lambda f: setattr(f.popularity, "_t0", 0),
    "popularity heads of the wrong type": lambda f: f.popularity._heads.__setitem__(None, "abc"),
    "a learner that cannot learn": lambda f: setattr(f.churn, "_labels", "many"),
    "a BTYD customer whose last order precedes the first": lambda f: f.btyd._sample.update(
        {7: [5_000, 3_000, 2, 10.0]}
    ),
    "a BTYD customer above the sampling threshold": lambda f: (
        setattr(f.btyd, "threshold", 100),
        f.btyd._sample.update({500: [1_000, 3_000, 2, 10.0]}),
    ),
    "BTYD parameters cut short": lambda f: setattr(f.btyd, "_bgnbd", (0.5, 30.0)),
    "BTYD parameters that are not positive": lambda f: setattr(
        f.btyd, "_bgnbd", (0.5, 30.0, -0.8, 3.2)
    ),
    "a churn mixture advantage that is not a number": lambda f: setattr(
        f.churn._mixture, "btyd_advantage", float("nan")
    ),
    "a calibration slope out of bounds": lambda f: setattr(f.churn._platt, "slope", 1e300),
    "a calibration refitted never": lambda f: setattr(f.churn._btyd, "refit_every", 0),
    "a calibration's start cut short": lambda f: setattr(f.churn._btyd, "start", (1.0,)),
    # Well-typed all the way down, and still broken: caught by exercising a copy.
    "a regression indexing outside its arrays": lambda f: f.offers._bandit._bayes_lin_regs[
        "none"
    ]._idx.update(dict.fromkeys(f.offers._bandit._bayes_lin_regs["none"]._idx, 10**6)),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_forged_but_loadable_checkpoint_is_refused(name: str, trained: Learners) -> None:
    data = _forge(trained, FORGERIES[name])
    pickle.loads(data[len(HEADER) :])  # it does load with a plain unpickler
    with pytest.raises(CorruptState):
        Learners.from_bytes(data)


def test_a_checkpoint_from_before_the_btyd_expert_reads_with_a_fresh_one(trained) -> None:
    older = pickle.loads(pickle.dumps(trained))
    del older.btyd
    learners = Learners.from_bytes(HEADER + pickle.dumps((2, older.__dict__), protocol=5))
    assert learners.churn.labels_seen == trained.churn.labels_seen
    assert len(learners.btyd) == 0 and learners.btyd.fits == 0


def test_a_checkpoint_from_before_the_churn_mixture_reads(trained) -> None:
    """The churn blend of a checkpoint written before the BTYD expert: its stacker's advantage
    in ``_advantage``, ONNX calibrated by a River regression. It reads, keeps both, and gets
    the BTYD expert fresh."""
    from river import linear_model, optim

    older = pickle.loads(pickle.dumps(trained))
    churn = older.churn.__dict__
    del churn["_mixture"], churn["_btyd"]
    churn["_advantage"], churn["_gamma"] = 2.5, 2.0 ** (-1 / 250)
    platt = linear_model.LogisticRegression(optimizer=optim.SGD(0.05), intercept_lr=0.05)
    platt.learn_one({"onnx_logit": 1.0}, True)
    churn["_platt"] = platt
    del older.btyd
    learners = Learners.from_bytes(HEADER + pickle.dumps((2, older.__dict__), protocol=5))
    blend = learners.churn
    assert blend._mixture.advantage == 2.5 and "_advantage" not in vars(blend)
    assert (blend._platt.slope, blend._platt.intercept) == (
        platt.weights["onnx_logit"],
        platt.intercept,
    )
    assert blend._btyd.seen == 0 and blend._mixture.btyd_advantage == 0.0
    assert blend.predict({}, 0.3, 0.4) == blend.predict({}, 0.3, 0.4)


def test_the_decoder_bounds_its_input() -> None:
    from stream.scoring.state import MAX_LEARNERS_BYTES

    assert MAX_LEARNERS_BYTES == chunked.MAX_VALUE_BYTES
    for data in (b"", b"x", b"SSLEARN2", b"SSLEARN2Z", HEADER, HEADER + b"garbage", "text", None):
        with pytest.raises(CorruptState):
            Learners.from_bytes(data)  # type: ignore[arg-type]


# -- fuzzing ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> bytes:
    return trained_learners(seed=5, labels=150).to_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_are_learners_or_corrupt_state(data: bytes) -> None:
    for blob in (data, HEADER + data, b"\x80\x05" + data):
        try:
            Learners.from_bytes(blob)
        except CorruptState:
            continue


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_mutated_checkpoints_are_usable_learners_or_corrupt_state(small: bytes, data) -> None:
    blob = bytearray(small)
    how = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice"]))
    at = data.draw(st.integers(len(HEADER), len(blob) - 1))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(len(HEADER), len(blob) - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del blob[at:]
    elif how == "insert":
        blob[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    elif how == "delete":
        del blob[at : at + data.draw(st.integers(1, 64))]
    else:
        end = data.draw(st.integers(at, len(blob)))
        blob[at:end] = blob[data.draw(st.integers(len(HEADER), len(blob) - 1)) :][: end - at]
    try:
        learners = Learners.from_bytes(bytes(blob))
    except CorruptState:
        return
    # Accepted: it works like learners (checked once more here, outside the decoder).
    x = {"log_orders": 1.0}
    learners.churn.learn(x, 0.5, True)
    learners.churn.predict(x, 0.5)
    learners.offers.choose({"bias": 1.0})
    learners.cooccurrence.update(["a", "b"], T0 + 10 * DAY_MS)
    learners.popularity.observe(CartChange("e", "u", T0 + 10 * DAY_MS, "a", "add", "books"))
    learners.popularity.top(5)
    Learners.from_bytes(learners.to_bytes())


# -- the pipeline: a partition's learners load strictly, count, log and start afresh -------------


def _learners(table: dict[bytes, bytes], secret: str | None = None) -> PartitionLearners:
    return PartitionLearners(table, secret)


def _checkpoint(learners: PartitionLearners, partition: int, table: dict[bytes, bytes]) -> None:
    """Checkpoint ``partition`` and write it into ``table`` as the worker writes a batch's."""
    stores = Stores({}, {}, table, {})
    view = BatchView(stores)
    learners.checkpoint([partition], view, force=True)
    stores.apply(view.writes())


@pytest.mark.parametrize(
    "records",
    [
        {b"0": b"SSCHUNK1 1 1", b"0#1#0": b"\x78\x9c garbage"},  # not zlib
        {b"0": b"SSCHUNK1 1 2", b"0#1#0": b""},  # a chunk missing
        {b"0": b"SSCHUNK1 1 -1"},  # a malformed header
        dict(chunked.split(b"0", HEADER + pickle.dumps(_Reduce(os.system, ("true",))), 1)),
        {b"0": pickle.dumps(_Reduce(os.system, ("true",)))},  # written before chunking
        {b"0": b""},  # an empty record is not "no checkpoint"
    ],
)
def test_a_partition_starts_afresh_from_a_forged_checkpoint(records, caplog) -> None:
    partitions = _learners(dict(records))
    with caplog.at_level(logging.WARNING, logger="shopscore"):
        learners = partitions.of(0)
        assert partitions.of(0) is learners  # loaded (and refused) once
    assert learners.to_bytes() == Learners(seed=0).to_bytes()
    assert partitions.take_rejected() == 1 and partitions.take_rejected() == 0
    (line,) = [r.getMessage() for r in caplog.records if "learners checkpoint" in r.getMessage()]
    assert "partition 0" in line and "b'0'" in line


def test_a_forged_checkpoint_is_counted_in_the_worker_metrics(tmp_path: Path) -> None:
    stores = Stores({}, {}, {b"0": b"SSCHUNK1 1 -1"}, {})
    pipeline = Pipeline(PipelineConfig(check_future=False), load_models(), stores)
    click = b'{"event_id": "e1", "user_id": "u1", "ts": %d, "item_id": "i1"}' % T0
    out = asyncio.run(pipeline.process([InputRecord("clicks", 0, 0, b"u1", click)]))
    metrics = Metrics()
    metrics.record(out.counts)
    rejected = metrics.registry.get_sample_value(
        "shopscore_state_records_rejected_total", {"table": "learners"}
    )
    assert rejected == 1


def test_checkpoints_are_signed_and_read_back() -> None:
    table: dict[bytes, bytes] = {}
    learners = _learners(table, SECRET)
    learners.of(2).tiers.update(5.0)
    _checkpoint(learners, 2, table)
    blob = chunked.join(table.get, b"2")
    assert blob is not None and blob.startswith(b"SSLEARN2S")
    again = _learners(table, SECRET).of(2)
    assert again.tiers.n == 1
    # The same records, read by a worker with another secret: refused, counted, fresh.
    other = _learners(table, "another secret")
    assert other.of(2).tiers.n == 0 and other.take_rejected() == 1
    # And by a worker without a secret: a signed checkpoint is read (restricted).
    assert _learners(table).of(2).tiers.n == 1


def test_a_checkpoint_is_written_over_a_forged_header() -> None:
    table = {b"1": b"SSCHUNK1 not a header"}
    learners = _learners(table)
    learners.of(1).tiers.update(5.0)
    _checkpoint(learners, 1, table)  # does not raise
    assert chunked.header(table[b"1"]) == (1, 1)
    assert _learners(table).of(1).tiers.n == 1
    table[b"1"] = b"SSCHUNK1 %d 1" % chunked.MAX_GENERATION  # the last generation: wraps
    table[chunked.chunk_key(b"1", chunked.MAX_GENERATION, 0)] = table[b"1#1#0"]
    _checkpoint(learners, 1, table)
    assert chunked.header(table[b"1"]) == (1, 1)
    assert chunked.chunk_key(b"1", chunked.MAX_GENERATION, 0) not in table  # old chunk deleted


def test_unpickling_reads_from_memory_only() -> None:
    # The restricted unpickler takes bytes; a file-like object is not a path to anything else.
    with pytest.raises(CorruptState):
        safe_pickle.loads(io.BytesIO(b"x").getvalue())


def test_periodic_checkpoints_are_spread_over_batches_oldest_first() -> None:
    """A checkpoint costs ~10 ms and ~0.5 MB: partitions first scored together must not all
    fall due on the same batch every ``every_s``. First checkpoints are never held back."""
    clock = [0.0]
    table: dict[bytes, bytes] = {}
    learners = PartitionLearners(table, None, every_s=5.0, monotonic=lambda: clock[0])

    def run_batch() -> list[int]:
        stores = Stores({}, {}, table, {})
        view = BatchView(stores)
        learners.checkpoint([0, 1, 2], view)
        stores.apply(view.writes())
        return sorted({w.partition for w in view.writes()})

    for partition in (0, 1, 2):
        learners.of(partition)
    assert run_batch() == [0, 1, 2]  # the first checkpoint of each
    clock[0] = 1.0
    assert run_batch() == []  # none due
    clock[0] = 6.0
    written = [run_batch(), run_batch(), run_batch(), run_batch()]
    assert sorted(p for batch in written[:3] for p in batch) == [0, 1, 2]
    assert all(len(batch) == 1 for batch in written[:3])  # one a batch
    assert written[3] == []  # each written once, then not due again
    clock[0] = 20.0  # all due again: the one written last waits for the two others
    last = written[2][0]
    assert last not in run_batch() + run_batch()
    assert run_batch() == [last]
