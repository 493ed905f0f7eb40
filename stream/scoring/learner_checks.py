"""The checks behind ``Learners.from_bytes`` once a checkpoint has unpickled: the loaded
learners have the shape of fresh ones (``_Shape``: the same types, attributes, functions and
classes, down to the River estimators inside), the co-occurrence and popularity models hold
plain, consistent data, and copies of the River learners can still learn and predict
(``_probe``). Each raises ``CorruptState`` (``strict.fail``) on the first mismatch.
"""

from __future__ import annotations

import copy
import functools
import types
from collections import Counter, OrderedDict, defaultdict, deque
from typing import TYPE_CHECKING, Any

import numpy as np

from stream import strict
from stream.features.schema import FEATURE_NAMES
from stream.models.popularity import ItemPopularity
from stream.scoring import safe_pickle
from stream.scoring.calibration import WindowedPlatt
from stream.scoring.cooccurrence import CoOccurrence
from stream.scoring.online_btyd import BtydExpert

if TYPE_CHECKING:
    from stream.scoring.online_churn import ChurnBlend
    from stream.scoring.state import Learners

__all__ = ["check_learners"]


_NUMBERS = (int, float)
_PLAIN = (type(None), bool, int, float, str, bytes)
_MAPPINGS = (dict, OrderedDict, defaultdict, Counter)
_SEQUENCES = (list, tuple, deque)
#: Objects visited when comparing the River learners with fresh ones (a trained partition's
#: have a few thousand: rolling windows of 1,000 labels are the bulk).
_SHAPE_BUDGET = 1_000_000
_MAX_DEPTH = 40


def check_learners(learners: Learners, reference: Learners) -> None:
    shape = _Shape()
    for name in ("churn", "interest", "offers", "tiers"):
        shape.conform(getattr(reference, name), getattr(learners, name), name, 0)
    shape.finish()
    _check_cooccurrence(learners.cooccurrence, reference.cooccurrence)
    _check_popularity(learners.popularity, reference.popularity)
    _check_btyd(learners.btyd, reference.btyd)
    _check_churn_blend(learners.churn)
    _probe(learners)


class _Shape:
    """Compares loaded learners with fresh ones (``conform``): the same types, attributes,
    functions and classes, recursively. Containers empty in the fresh ones may hold what their
    ``defaultdict`` factory builds, or plain data. Where the fresh ones hold None, or an
    attribute they do not have yet (River's pipeline caches its plan on first use), the loaded
    ones may hold plain data, or objects checked in their own place *within the same object*
    (the pipeline's cache must point at the pipeline's own steps, nothing foreign)."""

    def __init__(self) -> None:
        self.budget = _SHAPE_BUDGET
        #: Ids of the objects conformed so far, in visiting order (an object's subtree is a
        #: slice of it).
        self.order: list[int] = []
        #: Per object being conformed: the objects found where only data was expected.
        self.scopes: list[list[tuple[Any, str]]] = [[]]

    def _count(self, path: str, depth: int) -> None:
        self.budget -= 1
        if self.budget < 0 or depth > _MAX_DEPTH:
            raise strict.fail(f"{path}: too large or too deep")

    def _settle(self, pending: list[tuple[Any, str]], start: int) -> None:
        inside = set(self.order[start:])
        for obj, path in pending:
            if id(obj) not in inside:
                raise strict.fail(f"{path}: a {type(obj).__name__} of no expected place")

    def finish(self) -> None:
        self._settle(self.scopes[0], 0)

    def data(self, value: Any, path: str, depth: int) -> None:
        """Plain data: numbers, strings, None, numeric arrays, containers of them; any other
        object must be one checked in its own place (see ``finish``)."""
        self._count(path, depth)
        kind = type(value)
        if kind in _PLAIN:
            return
        if kind is np.ndarray:
            if value.dtype.hasobject:
                raise strict.fail(f"{path}: an object array")
            return
        if kind in _MAPPINGS:
            if kind is defaultdict and value.default_factory is not None:
                raise strict.fail(f"{path}: a defaultdict where plain data belongs")
            for key, sub in value.items():
                self.data(key, f"{path} key", depth + 1)
                self.data(sub, path, depth + 1)
            return
        if kind in _SEQUENCES or kind in (set, frozenset):
            for sub in value:
                self.data(sub, path, depth + 1)
            return
        self.scopes[-1].append((value, path))

    def conform(self, ref: Any, got: Any, path: str, depth: int) -> None:
        """``got`` (loaded) has the shape of ``ref`` (built fresh by shopscore)."""
        self._count(path, depth)
        kind = type(ref)
        if kind in _NUMBERS and type(got) in _NUMBERS:
            return
        if ref is None or got is None:
            self.data(got, path, depth)
            return
        if isinstance(ref, functools.partial):
            if not isinstance(got, functools.partial) or got.func is not ref.func:
                raise strict.fail(f"{path}: not the expected partial")
            self.conform(ref.args, got.args, f"{path}.args", depth + 1)
            if set(got.keywords) != set(ref.keywords):
                raise strict.fail(f"{path}: not the expected partial keywords")
            for key, value in ref.keywords.items():
                self.conform(value, got.keywords[key], f"{path}.{key}", depth + 1)
            return
        if type(got) is not kind:
            raise strict.fail(f"{path}: a {type(got).__name__} where a {kind.__name__} belongs")
        if kind in _PLAIN:
            return
        if isinstance(ref, type) or kind in (types.FunctionType, types.BuiltinFunctionType):
            if got is not ref:
                raise strict.fail(f"{path}: not the expected function or class")
            return
        if kind is types.MethodType:
            if got.__func__ is not ref.__func__:
                raise strict.fail(f"{path}: not the expected method")
            self.conform(ref.__self__, got.__self__, f"{path}.__self__", depth + 1)
            return
        if kind is np.ndarray:
            if got.dtype != ref.dtype or got.ndim != ref.ndim:
                raise strict.fail(f"{path}: an array of another dtype or rank")
            return
        if kind in _MAPPINGS:
            self._mapping(ref, got, path, depth)
            return
        if kind in _SEQUENCES:
            if kind is deque and got.maxlen != ref.maxlen:
                raise strict.fail(f"{path}: a deque of another length bound")
            if not ref:
                self.data(got, path, depth)
                return
            if len(got) != len(ref):
                raise strict.fail(f"{path}: {len(got)} entries where {len(ref)} belong")
            for index, (r, g) in enumerate(zip(ref, got, strict=True)):
                self.conform(r, g, f"{path}[{index}]", depth + 1)
            return
        start = len(self.order)
        self.order.append(id(got))
        attrs = getattr(ref, "__dict__", None)
        if attrs is None:  # an extension object (River's Rust types, random.Random)
            safe_pickle.check_extension(got)  # its setstate checked its bytes, not its bounds
            return
        got_attrs = getattr(got, "__dict__", None)
        if type(got_attrs) is not dict or not set(attrs) <= set(got_attrs):
            raise strict.fail(f"{path}: not the attributes of a {kind.__name__}")
        self.scopes.append([])
        for name, value in got_attrs.items():
            if type(name) is not str:
                raise strict.fail(f"{path}: a non-string attribute name")
            if name in attrs:
                self.conform(attrs[name], value, f"{path}.{name}", depth + 1)
            else:  # set on first use (a cache)
                self.data(value, f"{path}.{name}", depth + 1)
        self._settle(self.scopes.pop(), start)

    def _mapping(self, ref: Any, got: Any, path: str, depth: int) -> None:
        factory = None
        if type(ref) is defaultdict:
            if (ref.default_factory is None) != (got.default_factory is None):
                raise strict.fail(f"{path}: not the expected defaultdict factory")
            if ref.default_factory is not None:
                self.conform(ref.default_factory, got.default_factory, f"{path}.factory", depth)
                factory = ref.default_factory
        if ref:
            if set(got) != set(ref):
                raise strict.fail(f"{path}: not the expected keys")
            for key, value in ref.items():
                self.conform(value, got[key], f"{path}[{key!r:.40}]", depth + 1)
            return
        prototype = factory() if factory is not None else None
        for key, value in got.items():
            self.data(key, f"{path} key", depth + 1)
            if factory is not None:
                self.conform(prototype, value, f"{path}[{key!r:.40}]", depth + 1)
            else:
                self.data(value, path, depth + 1)


def _str_keys(value: Any, name: str) -> dict[str, Any]:
    for key in strict.need_dict(value, name):
        strict.need_str(key, f"{name} key")
    return value


def _check_params(got: Any, ref: Any, names: tuple[str, ...]) -> None:
    if type(got.__dict__) is not dict or set(got.__dict__) != set(ref.__dict__):
        raise strict.fail(f"not the attributes of a {type(ref).__name__}")
    for name in names:
        if getattr(got, name) != getattr(ref, name) or type(getattr(got, name)) is not int:
            raise strict.fail(f"{type(ref).__name__}.{name} is not {getattr(ref, name)}")


def _check_cooccurrence(co: CoOccurrence, ref: CoOccurrence) -> None:
    _check_params(
        co, ref, ("half_life_ms", "max_neighbours", "max_items", "max_basket", "top_size")
    )
    t0 = strict.opt_int(co._t0, "co-occurrence t0")
    last = _str_keys(co._last, "co-occurrence last")
    for ts in last.values():
        strict.need_int(ts, "co-occurrence last seen", 0, strict.MAX_TS)
    if (t0 is None) != (not last):
        raise strict.fail("co-occurrence t0 and items disagree")
    if t0 is not None:
        newest = max(last.values())
        # The scale is rebased at 2**40 (40 half-lives): a t0 further from the data would
        # overflow the next weight, a later one is not a time the model was at.
        if newest - t0 > 41 * co.half_life_ms or t0 - newest > 86_400_000:
            raise strict.fail("co-occurrence t0 is inconsistent with its items")
    for name in ("_pop", "_top"):
        for value in _str_keys(getattr(co, name), f"co-occurrence {name}").values():
            strict.need_num(value, f"co-occurrence {name}", 0.0)
    for neighbours in _str_keys(co._nb, "co-occurrence neighbours").values():
        for value in _str_keys(neighbours, "co-occurrence neighbours").values():
            strict.need_num(value, "co-occurrence weight", 0.0)


def _check_btyd(expert: BtydExpert, ref: BtydExpert) -> None:
    """The expert's parameters and sample are plain, bounded, consistent data (its
    ``__setstate__`` already unpacked the sample from one ``bytes``)."""
    if set(vars(expert)) != set(vars(ref)):
        raise strict.fail("BTYD expert: not the attributes of a BtydExpert")
    size = strict.need_int(expert.sample_size, "BTYD sample size", 2, 1_000_000)
    strict.need_int(expert.refit_every, "BTYD refit period", 1, 10**9)
    threshold = strict.need_int(expert.threshold, "BTYD threshold", 1, 2**64)
    strict.need_int(expert._orders_since_fit, "BTYD orders since fit", 0)
    strict.need_int(expert.fits, "BTYD fits", 0)
    for name, length in (("_bgnbd", 4), ("_gamma_gamma", 3)):
        params = getattr(expert, name)
        if params is None and name == "_gamma_gamma":
            continue
        if type(params) is not tuple or len(params) != length:
            raise strict.fail(f"BTYD {name} is not {length} parameters")
        for value in params:
            strict.need_num(value, f"BTYD {name}", 1e-12, 1e12)
    sample = expert._sample
    if type(sample) is not dict or len(sample) > size:
        raise strict.fail("BTYD sample larger than its bound")
    for h, (first, last, orders, spend) in sample.items():
        if not 0 <= h < threshold or not 0 <= first <= last <= strict.MAX_TS:
            raise strict.fail("BTYD sample entry out of bounds")
        strict.need_int(orders, "BTYD orders", 1)
        strict.need_num(spend, "BTYD spend", 0.0)


def _check_churn_blend(churn: ChurnBlend) -> None:
    """The mixture's advantages and the calibrations' parameters are finite numbers (a NaN
    conforms to a float's shape, and would publish NaN churn), and the calibration windows
    hold what their bounds allow (their ``__setstate__`` checked each label)."""
    mixture = churn._mixture
    strict.need_num(mixture.eta, "churn mixture eta", 1e-9)
    strict.need_num(mixture.gamma, "churn mixture gamma", 0.0, 1.0)
    strict.need_num(mixture.drift_weight, "churn mixture drift weight", 1e-9, 1.0 - 1e-9)
    for name in ("advantage", "customer_advantage", "btyd_advantage"):
        strict.need_num(getattr(mixture, name), f"churn mixture {name}")
    for name in ("_platt", "_btyd"):
        platt: WindowedPlatt = getattr(churn, name)
        strict.need_int(platt.window, f"churn {name} window", 2, 10**6)
        strict.need_int(platt.refit_every, f"churn {name} refit period", 1, 10**9)
        strict.need_int(platt.seen, f"churn {name} labels seen", 0)
        strict.need_int(platt._since_fit, f"churn {name} labels since fit", 0)
        strict.need_num(platt.prior_labels, f"churn {name} prior", 0.0)
        for value in (platt.slope, platt.intercept, *platt.start):
            strict.need_num(value, f"churn {name} parameter", -1e6, 1e6)
        if type(platt.start) is not tuple or len(platt.start) != 2:
            raise strict.fail(f"churn {name}: a start of two parameters")


def _check_popularity(pop: ItemPopularity, ref: ItemPopularity) -> None:
    _check_params(pop, ref, ("half_life_ms",))
    t0 = strict.opt_int(pop._t0, "popularity t0")
    now = strict.opt_int(pop._now, "popularity now")
    if (t0 is None) != (now is None) or (
        t0 is not None and not 0 <= now - t0 <= 41 * pop.half_life_ms
    ):
        raise strict.fail("popularity t0 and now disagree")
    for value in _str_keys(pop._category, "popularity categories").values():
        strict.need_str(value, "an item's category")
    for name in ("_scaled", "_category_scaled"):
        for value in _str_keys(getattr(pop, name), f"popularity {name}").values():
            strict.need_num(value, f"popularity {name}")
    for items in _str_keys(pop._by_category, "popularity by category").values():
        for value in _str_keys(items, "popularity by category").values():
            strict.need_num(value, "popularity count")
    for key, head in strict.need_dict(pop._heads, "popularity heads").items():
        if key is not None:
            strict.need_str(key, "popularity head category")
        for item in strict.need_list(head, "popularity head", 1_000):
            strict.need_str(item, "popularity head item")


def _probe(learners: Learners) -> None:
    """Exercise copies of the River learners once: a River state that loads but cannot learn
    or predict (a forged Rust state panics, say) is refused now, not in a batch later."""
    try:
        churn = copy.deepcopy(learners.churn)
        x = {"probe": 0.5}
        churn.predict(x, 0.5)
        churn.predict(x, 0.5, 0.5)
        churn.learn(x, 0.5, True)
        churn.learn(x, 0.5, False, 0.5, [0.5, 0.5])
        churn._platt.refit()
        churn._btyd.refit()
        churn.metrics()
        interest = copy.deepcopy(learners.interest)
        features = {"onnx_p": 0.5, "affinity_share": 0.5, "recent_share": 0.0, "is_last": 0.0}
        candidates = {"a": features, "b": features}
        interest.rank(candidates, 2)
        interest.record_hit(["a"], "a")
        interest.learn(candidates, "a")
        interest.metrics()
        offers = copy.deepcopy(learners.offers)
        context = {"churn": 0.5, "log_spend": 1.0, "log_orders": 1.0, "bias": 1.0}
        arm, _propensity = offers.choose(context)
        offers.learn(context, arm, -offers.cost(arm))
        tiers = copy.deepcopy(learners.tiers)
        tiers.update(1.0)
        tiers.tier(1.0)
        btyd = copy.deepcopy(learners.btyd)
        btyd.predict([[1.0] * len(FEATURE_NAMES)], [30.0], 365.0)
        _exercise_rust_state(learners)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # pyo3's PanicException is a BaseException
        raise strict.fail(f"the learners do not work: {exc!r}"[:300]) from None


#: Updates at most given to a copy of a drift detector while probing (bounds the cost of a
#: forged, huge window: about a microsecond each).
_MAX_PROBE_UPDATES = 50_000


def _exercise_rust_state(learners: Learners) -> None:
    """Drive copies of the River objects whose state is Rust's own bytes through every slot
    of that state. One forged count in ADWIN's bucket rows, or in a rolling AUC's ring, loads
    and even survives a learn, then panics when its row fills a few labels later (found by
    ``test_mutated_checkpoints_are_usable_learners_or_corrupt_state``): ADWIN compresses a
    row into the next after ``max_buckets + 1`` inserts, so about twice its width in updates
    reaches its last row; a rolling AUC wraps its ring after ``window_size``."""
    adwin = copy.deepcopy(learners.churn._adwin)
    rows = 2 * (adwin.max_buckets + 1)
    for i in range(min(2 * int(adwin.width) + 8 * rows + 64, _MAX_PROBE_UPDATES)):
        adwin.update(float(i % 2))
    for name in ("_auc_blend", "_auc_onnx"):
        auc = copy.deepcopy(getattr(learners.churn, name))
        for i in range(min(auc.window_size + 2, _MAX_PROBE_UPDATES)):
            auc.update(bool(i % 2), 0.5)
        auc.get()
    for quantile in learners.tiers._quantiles:
        probe = copy.deepcopy(quantile)
        for i in range(16):
            probe.update(float(i))
        probe.get()
