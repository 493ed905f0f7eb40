"""What scoring keeps: per user (latest scores, predictions awaiting their labels) and per
partition (the online learners), both small enough for a changelog-backed table.

Per-user scoring state lives beside, not inside, the feature state: a feature state is a
function of the events alone (replayable, comparable with offline training), while this one
also depends on which model versions scored the user.

Learners are kept per input partition. A partition's users, their pending labels and the
learners that learn from them move together on a rebalance, so no learner ever needs data
from another worker, and the changelog restores each one with its partition.

Both are read back from changelog topics, which anyone with write access to the broker can
write to, so both decoders are strict: ``UserScores.from_bytes`` checks every field's type and
bounds, and ``Learners.from_bytes`` never runs code (``stream.scoring.safe_pickle``), checks an
HMAC-SHA256 signature when a secret is configured (``SHOPSCORE_STATE_SECRET``), and checks the
loaded learners' shape against fresh ones. Either returns a well-formed object or raises
``CorruptState``, never another exception.

Learners checkpoint format (``Learners.to_bytes``)::

    b"SSLEARN2" b"U" <pickle>            unsigned (no secret configured)
    b"SSLEARN2" b"S" <32-byte HMAC> <pickle>   signed: HMAC-SHA256(secret, b"SSLEARN2S" + pickle)

where the pickle is ``(2, learners.__dict__)``. A checkpoint written before this format (a bare
pickle of ``(1, __dict__)``) is still read, through the same restricted unpickler, when no
secret is configured; with a secret, only a correctly signed checkpoint is read.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import pickle
import types
from collections import Counter, OrderedDict, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from stream import chunked, strict
from stream.errors import CorruptState
from stream.features.schema import FEATURE_NAMES
from stream.models.popularity import ItemPopularity
from stream.scoring import safe_pickle
from stream.scoring.cooccurrence import CoOccurrence
from stream.scoring.offers import DEFAULT_ARMS, OfferPolicy
from stream.scoring.online_churn import ChurnBlend
from stream.scoring.online_interest import InterestBlend
from stream.scoring.tiers import SpendTiers

__all__ = ["MAX_LEARNERS_BYTES", "MAX_SCORES_BYTES", "Learners", "UserScores"]

_USER_FORMAT = 1
#: Inside the ``SSLEARN2`` envelope; 1 is the bare pickle written before it.
_LEARNERS_FORMAT = 2
_LEGACY_LEARNERS_FORMAT = 1
_MAGIC = b"SSLEARN2"
_SIGNED = b"S"
_UNSIGNED = b"U"
_MAC_BYTES = hashlib.sha256().digest_size

#: The largest scoring state record read back.
MAX_SCORES_BYTES = 8 * 2**20
#: The largest learners checkpoint read back (what ``stream.chunked`` inflates at most).
MAX_LEARNERS_BYTES = chunked.MAX_VALUE_BYTES


@dataclass
class UserScores:
    """One user's latest published scores and the predictions still waiting for a label."""

    #: Output topic -> the last message published there for this user.
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Churn predictions awaiting their label: ``[ts, vector, p_onnx]`` (``pending.PendingChurn``).
    churn_pending: list[Any] = field(default_factory=list)
    #: The last interest ranking: ``{"ranked": [...], "candidates": {cat: {feature: v}}}``.
    interest_pending: dict[str, Any] | None = None
    #: The offer shown and not yet rewarded: ``{"ts", "arm", "propensity", "context"}``.
    offer_pending: dict[str, Any] | None = None
    last_offer_ts: int | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            [
                _USER_FORMAT,
                self.latest,
                [list(p) for p in self.churn_pending],
                self.interest_pending,
                self.offer_pending,
                self.last_offer_ts,
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> UserScores:
        """The ``UserScores`` that ``to_bytes`` wrote, or ``CorruptState``: every field's type
        and bounds are checked (a pending churn vector has ``len(FEATURE_NAMES)`` numbers, an
        offer's arm is a known arm...), so a forged record cannot crash scoring later.

        >>> UserScores.from_bytes(UserScores(last_offer_ts=5).to_bytes()).last_offer_ts
        5
        >>> UserScores.from_bytes(b"[1, {}, 5]")
        Traceback (most recent call last):
        ...
        stream.errors.CorruptState: scoring state: expected 6 fields, got 3
        """
        return strict.decoded("scoring state", _decode_scores, data)


_MAX_TOPICS = 64
_MAX_FEATURES = 64
_MAX_PENDING = 10_000
_MAX_CANDIDATES = 100_000


def _decode_scores(data: Any) -> UserScores:
    fields = strict.versioned_array(
        data, max_bytes=MAX_SCORES_BYTES, formats=(_USER_FORMAT,), fields=6
    )
    _fmt, latest, churn, interest, offer, last_offer = fields
    for topic, message in strict.need_dict(latest, "latest", _MAX_TOPICS).items():
        strict.need_str(topic, "latest topic", 256)
        strict.need_json(strict.need_dict(message, "latest message", 1_000), "latest message")
    for entry in strict.need_list(churn, "churn_pending", _MAX_PENDING):
        _check_pending_churn(entry)
    if interest is not None:
        _check_pending_interest(interest)
    if offer is not None:
        _check_pending_offer(offer)
    return UserScores(latest, churn, interest, offer, strict.opt_int(last_offer, "last_offer_ts"))


def _check_pending_churn(entry: Any) -> None:
    strict.need_list(entry, "a pending churn prediction", 4)
    if len(entry) not in (3, 4):
        raise strict.fail("a pending churn prediction needs 3 or 4 fields")
    strict.need_int(entry[0], "pending churn ts", 0, strict.MAX_TS)
    for value in strict.need_list(entry[1], "pending churn vector", length=len(FEATURE_NAMES)):
        strict.need_num(value, "a pending churn feature")
    strict.need_num(entry[2], "pending churn p_onnx", 0.0, 1.0)
    if len(entry) == 4:
        strict.need_bool(entry[3], "pending churn ordered")


def _check_features(value: Any, name: str) -> None:
    for key, number in strict.need_dict(value, name, _MAX_FEATURES).items():
        strict.need_str(key, f"{name} key", 256)
        strict.need_num(number, name)


def _check_pending_interest(value: Any) -> None:
    pending = strict.need_dict(value, "interest_pending", 3)
    if not {"ranked", "candidates"} <= set(pending) <= {"ts", "ranked", "candidates"}:
        raise strict.fail("interest_pending needs ranked and candidates (and ts)")
    strict.opt_int(pending.get("ts"), "interest_pending ts")
    for category in strict.need_list(pending["ranked"], "ranked", 1_000):
        strict.need_str(category, "a ranked category")
    candidates = strict.need_dict(pending["candidates"], "candidates", _MAX_CANDIDATES)
    for category, features in candidates.items():
        strict.need_str(category, "a candidate category")
        _check_features(features, "candidate features")


def _check_pending_offer(value: Any) -> None:
    offer = strict.need_dict(value, "offer_pending", 5)
    if not {"ts", "arm", "propensity", "context"} <= set(offer) <= {
        "ts", "arm", "propensity", "context", "cost",
    }:  # fmt: skip
        raise strict.fail("offer_pending needs ts, arm, propensity and context (and cost)")
    strict.need_int(offer["ts"], "offer ts", 0, strict.MAX_TS)
    if offer["arm"] not in DEFAULT_ARMS:
        raise strict.fail("offer_pending names an unknown arm")
    strict.need_num(offer["propensity"], "offer propensity", 0.0, 1.0)
    _check_features(offer["context"], "offer context")
    if "cost" in offer:
        strict.need_num(offer["cost"], "offer cost")


# -- learners ------------------------------------------------------------------------------------


def _mac(secret: str, signed: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()


class Learners:
    """The online learners of one partition."""

    def __init__(self, seed: int = 0) -> None:
        self.churn = ChurnBlend(seed=seed)
        self.interest = InterestBlend(seed=seed)
        self.cooccurrence = CoOccurrence()
        self.popularity = ItemPopularity()
        self.offers = OfferPolicy(seed=seed)
        self.tiers = SpendTiers()
        #: Labels learned since the last checkpoint to the changelog.
        self.dirty = 0

    def to_bytes(self, secret: str | None = None) -> bytes:
        """The checkpoint (see the module docstring): a pickle in a versioned envelope, signed
        with HMAC-SHA256 when ``secret`` is given."""
        self.dirty = 0
        body = pickle.dumps((_LEARNERS_FORMAT, self.__dict__), protocol=pickle.HIGHEST_PROTOCOL)
        if not secret:
            return _MAGIC + _UNSIGNED + body
        head = _MAGIC + _SIGNED
        return head + _mac(secret, head + body) + body

    @classmethod
    def from_bytes(cls, data: bytes, secret: str | None = None) -> Learners:
        """The learners ``to_bytes`` wrote, or ``CorruptState``. Reading never runs code (only
        the globals of ``safe_pickle.ALLOWED`` resolve). With ``secret``, only a checkpoint
        signed with it is read; without, a signed or unsigned one is read (the signature
        cannot be checked). The result is checked against fresh ``Learners``: the same
        attributes, of the same types, down to the River estimators inside, and the River
        learners are exercised on a copy, so a forged but loadable checkpoint is refused
        here rather than failing a batch later."""
        try:
            return cls._from_bytes(data, secret)
        except CorruptState:
            raise
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # a safety net (Rust panics included)
            raise CorruptState("learners checkpoint", f"unusable: {exc!r}"[:300]) from None

    @classmethod
    def _from_bytes(cls, data: Any, secret: str | None) -> Learners:
        what = "learners checkpoint"
        if not isinstance(data, bytes | bytearray):
            raise CorruptState(what, f"not bytes ({type(data).__name__})")
        if len(data) > MAX_LEARNERS_BYTES:
            raise CorruptState(what, f"{len(data)} bytes > {MAX_LEARNERS_BYTES}")
        data = bytes(data)
        if data.startswith(_MAGIC):
            mode = data[len(_MAGIC) : len(_MAGIC) + 1]
            head = len(_MAGIC) + 1
            if mode == _SIGNED:
                mac, body = data[head : head + _MAC_BYTES], data[head + _MAC_BYTES :]
                if len(mac) != _MAC_BYTES:
                    raise CorruptState(what, "truncated signature")
                if secret and not hmac.compare_digest(mac, _mac(secret, data[:head] + body)):
                    raise CorruptState(what, "bad signature (another secret, or forged)")
            elif mode == _UNSIGNED:
                if secret:
                    raise CorruptState(what, "unsigned, and SHOPSCORE_STATE_SECRET is set")
                body = data[head:]
            else:
                raise CorruptState(what, f"unknown envelope mode {mode!r}")
            expected = _LEARNERS_FORMAT
        elif data[:1] == b"\x80":  # a bare pickle: the format before the envelope
            if secret:
                raise CorruptState(what, "unsigned (old format), and SHOPSCORE_STATE_SECRET is set")
            body, expected = data, _LEGACY_LEARNERS_FORMAT
        else:
            raise CorruptState(what, "not a learners checkpoint")
        loaded = safe_pickle.loads(body)
        if type(loaded) is not tuple or len(loaded) != 2 or type(loaded[0]) is not int:
            raise CorruptState(what, "not a learners record")
        if loaded[0] != expected:
            raise CorruptState(what, f"not a format-{expected} learners record")
        attrs = loaded[1]
        reference = cls()
        if type(attrs) is not dict or set(attrs) != set(reference.__dict__):
            raise CorruptState(what, "not the attributes of Learners")
        for name, value in reference.__dict__.items():
            if type(attrs[name]) is not type(value):
                raise CorruptState(
                    what, f"{name} is a {type(attrs[name]).__name__}, not a {type(value).__name__}"
                )
        learners = cls.__new__(cls)
        learners.__dict__.update(attrs)
        strict.need_int(learners.dirty, "dirty")
        try:
            _check_learners(learners, reference)
        except CorruptState as exc:
            raise CorruptState(what, exc.detail) from None
        return learners


# -- the checks behind Learners.from_bytes ------------------------------------------------------

_NUMBERS = (int, float)
_PLAIN = (type(None), bool, int, float, str, bytes)
_MAPPINGS = (dict, OrderedDict, defaultdict, Counter)
_SEQUENCES = (list, tuple, deque)
#: Objects visited when comparing the River learners with fresh ones (a trained partition's
#: have a few thousand: rolling windows of 1,000 labels are the bulk).
_SHAPE_BUDGET = 1_000_000
_MAX_DEPTH = 40


def _check_learners(learners: Learners, reference: Learners) -> None:
    shape = _Shape()
    for name in ("churn", "interest", "offers", "tiers"):
        shape.conform(getattr(reference, name), getattr(learners, name), name, 0)
    shape.finish()
    _check_cooccurrence(learners.cooccurrence, reference.cooccurrence)
    _check_popularity(learners.popularity, reference.popularity)
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
        churn.learn(x, 0.5, True)
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
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # pyo3's PanicException is a BaseException
        raise strict.fail(f"the learners do not work: {exc!r}"[:300]) from None
