"""Reading a learners checkpoint without letting it run code: an allowlisting unpickler.

A pickle is a small program: its ``GLOBAL``/``STACK_GLOBAL`` opcodes import any callable and
``REDUCE`` calls it, so ``pickle.loads`` of bytes from the ``learners`` changelog (which anyone
with write access to the broker can write) ran ``os.system`` at the next restart. Here every
global a checkpoint may name is an exact ``(module, name)`` pair in ``ALLOWED``, mapped to the
object the unpickler gets instead of an import. Nothing else resolves: no ``builtins.eval``,
``exec``, ``getattr``, ``__import__``, ``open``, no ``os``, ``subprocess``, ``sys``,
``importlib``, ``functools``, ``operator``, ``codecs``, ``pickle``.

Each entry resolves to one of:

* the real object, for containers and functions whose call with any arguments only builds
  data (``collections`` containers, ``random.Random``, ``builtins.float`` as a ``defaultdict``
  factory, the churn learner's ``_clip_scaled``);
* for River's and shopscore's classes, a stand-in that creates the object without running
  ``__init__`` and refuses arguments: a checkpoint only re-creates them (``NEWOBJ`` then
  ``BUILD``), while a forged ``REDUCE`` would run ``__init__`` with arguments of its choosing;
* for River's Rust classes, a guard that checks the constructor's arguments first: they
  allocate what their arguments say (a window of 10**15 floats), and a failed allocation in
  Rust aborts the process, no exception to catch. ``check_extension`` applies the same bounds
  to the arguments a loaded object reports, since its state came from the checkpoint too;
* a narrowed stand-in for the two generic helpers River's own pickles use: ``functools.partial``
  (a ``defaultdict`` factory) resolves to a partial that only ever wraps
  ``collections.defaultdict`` or River's ``BayesianLinearRegression``, with plain-data
  arguments; ``builtins.getattr`` (a bound ``reward_obj.clone`` used as a ``defaultdict``
  factory) resolves to a function that only returns ``.clone`` of a River estimator;
* numpy's array and dtype reconstructors, narrowed to plain numeric dtypes (never object
  arrays, whose bytes would be read as pointers).

Before the unpickler runs, ``scan`` walks the opcodes once and refuses what no checkpoint holds
and the C unpickler would act on before any check can (a memo index of 10**9 makes it allocate
a 10**9-entry memo). Whatever the unpickler raises, a Rust panic included, becomes
``CorruptState``.

``ALLOWED`` is exactly what fully trained ``Learners`` need (a test trains them, by direct calls
and through the real engine, and checks every global their pickles name is here).
"""

from __future__ import annotations

import functools
import io
import math
import pickle
from collections.abc import Callable
from typing import Any

from stream.errors import CorruptState

__all__ = ["ALLOWED", "SafeUnpickler", "allowed", "check_extension", "loads", "scan"]

_WHAT = "learners checkpoint"

# Bounds of the Rust constructors' arguments: far above River's defaults and shopscore's use
# (windows of 1,000 labels, ADWIN's clock 32 / 5 buckets), far below an allocation that aborts.
_MAX_WINDOW = 10_000_000
_MAX_ADWIN_PARAM = 1_000_000


def _refuse(detail: str) -> CorruptState:
    return CorruptState(_WHAT, detail)


def _int_in(value: Any, lo: int, hi: int, name: str) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise _refuse(f"{name} {value!r:.40} is not an integer in [{lo}, {hi}]")
    return value


# -- guards for River's Rust constructors ------------------------------------------------------
# ``NEWOBJ`` calls ``cls.__new__(cls, *args)``: a class whose ``__new__`` checks the arguments
# and returns the real object stands in for the Rust class.


class _AdaptiveWindowingGuard:
    @staticmethod
    def check(*args: Any, **kwargs: Any) -> None:
        if kwargs or len(args) != 5:
            raise _refuse("AdaptiveWindowing takes 5 positional arguments")
        delta, clock, max_buckets, min_window_length, grace_period = args
        if type(delta) is not float or not 0.0 < delta < 1.0:
            raise _refuse("AdaptiveWindowing delta is not a float in (0, 1)")
        _int_in(clock, 1, _MAX_ADWIN_PARAM, "ADWIN clock")
        _int_in(max_buckets, 1, 1_000, "ADWIN max_buckets")
        _int_in(min_window_length, 1, _MAX_ADWIN_PARAM, "ADWIN min_window_length")
        _int_in(grace_period, 0, _MAX_ADWIN_PARAM, "ADWIN grace_period")

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from river._river_rust.drift import AdaptiveWindowing

        cls.check(*args, **kwargs)
        return AdaptiveWindowing(*args)


class _RollingROCAUCGuard:
    @staticmethod
    def check(*args: Any, **kwargs: Any) -> None:
        if kwargs or len(args) != 2:
            raise _refuse("RsRollingROCAUC takes 2 positional arguments")
        _int_in(args[0], 0, 1, "RsRollingROCAUC positive label")
        _int_in(args[1], 1, _MAX_WINDOW, "RsRollingROCAUC window")

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from river._river_rust.stats import RsRollingROCAUC

        cls.check(*args, **kwargs)
        return RsRollingROCAUC(*args)


class _QuantileGuard:
    @staticmethod
    def check(*args: Any, **kwargs: Any) -> None:
        if kwargs or len(args) > 1:
            raise _refuse("RsQuantile takes at most 1 argument")
        if args and (type(args[0]) is not float or not 0.0 <= args[0] <= 1.0):
            raise _refuse("RsQuantile's quantile is not a float in [0, 1]")

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from river._river_rust.stats import RsQuantile

        cls.check(*args, **kwargs)
        return RsQuantile(*args)


def check_extension(obj: Any) -> None:
    """The constructor arguments of a loaded River Rust object, as its own ``__reduce_ex__``
    reports them, within the guards' bounds. Its state was set from the checkpoint's bytes, so
    they may be forged even when the constructor call was not, and copying or re-pickling the
    object calls the constructor with them (an allocation that aborts the process)."""
    from river._river_rust.drift import AdaptiveWindowing
    from river._river_rust.stats import RsQuantile, RsRollingROCAUC

    guard = {
        AdaptiveWindowing: _AdaptiveWindowingGuard,
        RsRollingROCAUC: _RollingROCAUCGuard,
        RsQuantile: _QuantileGuard,
    }.get(type(obj))
    if guard is None:
        return
    reduced = obj.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    if type(reduced) is not tuple or len(reduced) < 2 or type(reduced[1]) is not tuple:
        raise _refuse(f"an unexpected {type(obj).__name__} reduction")
    cls, *args = reduced[1]
    if cls is not type(obj):
        raise _refuse(f"an unexpected {type(obj).__name__} reduction")
    guard.check(*args)


def _vector_dict(*args: Any) -> Any:
    from river._river_rust.vectordict import VectorDict

    if not 1 <= len(args) <= 4:
        raise _refuse("VectorDict takes 1 to 4 arguments")
    data = args[0]
    if data is not None and type(data) is not dict:
        raise _refuse("VectorDict data is not a dict")
    if len(args) > 2 and args[2] is not None and type(args[2]) is not VectorDict:
        raise _refuse("VectorDict mask is not a VectorDict")
    return VectorDict(*args)


# -- narrowed generic helpers ------------------------------------------------------------------


def _plain(value: Any) -> bool:
    return value is None or type(value) in (bool, int, float, str)


def _partial_targets() -> tuple[Any, ...]:
    """What a partial may wrap: ``defaultdict`` (River's confusion matrix:
    ``defaultdict(partial(defaultdict, float))``) and the regression of each LinUCB arm."""
    import collections

    from river.linear_model import BayesianLinearRegression

    return (collections.defaultdict, BayesianLinearRegression)


class _CheckedPartial(functools.partial):
    """A ``functools.partial`` that only wraps the factories River's pickles use, with plain
    data arguments (checked when built and when its state is set, as ``BUILD`` does); it
    pickles as a plain ``functools.partial`` again, so a re-checkpoint is byte-identical."""

    def __new__(cls, func: Any, /, *args: Any, **keywords: Any) -> _CheckedPartial:
        func = _unwrap(func)
        _check_partial(func, args, keywords)
        return super().__new__(cls, func, *args, **keywords)

    def __setstate__(self, state: Any) -> None:
        if type(state) is not tuple or len(state) != 4:
            raise _refuse("malformed partial state")
        func, args, keywords, namespace = state
        if type(args) is not tuple or (keywords is not None and type(keywords) is not dict):
            raise _refuse("malformed partial state")
        if namespace:
            raise _refuse("a partial with attributes")
        func = _unwrap(func)
        _check_partial(func, args, keywords or {})
        super().__setstate__((func, args, keywords, namespace))

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            functools.partial,
            (self.func,),
            (self.func, self.args, self.keywords, self.__dict__ or None),
        )


def _check_partial(func: Any, args: tuple[Any, ...], keywords: dict[str, Any]) -> None:
    if not any(func is target for target in _partial_targets()):
        raise _refuse(f"a partial of {getattr(func, '__name__', type(func).__name__)!r:.60}")
    if not all(_plain(a) or a is float for a in args):  # float: a defaultdict's factory
        raise _refuse("a partial with non-data arguments")
    if not all(type(k) is str and _plain(v) for k, v in keywords.items()):
        raise _refuse("a partial with non-data keywords")


def _clone_of(obj: Any, name: Any) -> Any:
    """``getattr`` narrowed to what River's bandits pickle: ``estimator.clone``."""
    from river import base

    if name != "clone" or not isinstance(obj, base.Base) or isinstance(obj, type):
        raise _refuse(f"getattr({type(obj).__name__}, {name!r:.40}) is not allowed")
    return obj.clone


# -- numpy ------------------------------------------------------------------------------------

#: River's regressions keep float64 arrays; a few more plain numeric types, never complex,
#: strings, datetimes, structured or object dtypes.
_DTYPES = frozenset(["f8", "f4", "i8", "i4", "u8", "u4", "u1", "b1"])


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> Any:
    import numpy as np

    if type(spec) is not str or spec not in _DTYPES:
        raise _refuse(f"numpy dtype {spec!r:.40} is not a plain numeric dtype")
    if type(align) is not bool or type(copy) is not bool:
        raise _refuse("malformed numpy dtype arguments")
    return np.dtype(spec, align, copy)


def _numeric(dtype: Any) -> bool:
    import numpy as np

    return (
        isinstance(dtype, np.dtype)
        and not dtype.hasobject
        and dtype.fields is None
        and dtype.subdtype is None
        and dtype.kind in "biuf"
    )


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> Any:
    from numpy._core.numeric import _frombuffer as frombuffer

    if type(buf) not in (bytes, bytearray):
        raise _refuse("a numpy array buffer that is not bytes")
    if not _numeric(dtype):
        raise _refuse("a numpy array of a non-numeric dtype")
    if (
        type(shape) is not tuple
        or len(shape) > 32
        or not all(type(n) is int and 0 <= n <= 2**40 for n in shape)
    ):
        raise _refuse("a malformed numpy array shape")
    if order not in ("C", "F"):
        raise _refuse("a malformed numpy array order")
    if math.prod(shape) * dtype.itemsize != len(buf):
        raise _refuse("a numpy array whose buffer does not match its shape")
    return frombuffer(buf, dtype, shape, order)


# -- the allowlist ------------------------------------------------------------------------------

#: Resolved to the real object: containers and functions whose call with any arguments only
#: builds data (a pickle calls them with ``REDUCE``: ``defaultdict(float)``, ``Random()``...).
_REAL: tuple[tuple[str, str], ...] = (
    ("builtins", "float"),
    ("collections", "Counter"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("collections", "deque"),
    ("random", "Random"),
    ("stream.scoring.online_churn", "_clip_scaled"),
)

#: River's and shopscore's classes. A checkpoint only ever re-creates them with ``NEWOBJ``
#: (``cls.__new__(cls)``, then ``BUILD`` sets their attributes); a forged ``REDUCE`` would run
#: their ``__init__`` with arguments of its choosing (River's build Rust objects of any size
#: there). So they resolve to a stand-in that creates the object without ``__init__`` and
#: refuses arguments.
_CLASSES: tuple[tuple[str, str], ...] = (
    ("river.bandit.lin_ucb", "LinUCBDisjoint"),
    ("river.compose.func", "FuncTransformer"),
    ("river.compose.pipeline", "Pipeline"),
    ("river.drift.adwin", "ADWIN"),
    ("river.linear_model.bayesian_lin_reg", "BayesianLinearRegression"),
    ("river.linear_model.log_reg", "LogisticRegression"),
    ("river.metrics.accuracy", "Accuracy"),
    ("river.metrics.confusion", "ConfusionMatrix"),
    ("river.metrics.log_loss", "LogLoss"),
    ("river.metrics.rolling_roc_auc", "RollingROCAUC"),
    ("river.optim.initializers", "Zeros"),
    ("river.optim.losses", "Log"),
    ("river.optim.schedulers", "Constant"),
    ("river.optim.sgd", "SGD"),
    ("river.preprocessing.scale", "StandardScaler"),
    ("river.stats.mean", "Mean"),
    ("river.stats.quantile", "Quantile"),
    ("river.utils.rolling", "Rolling"),
    ("stream.models.popularity", "ItemPopularity"),
    ("stream.scoring.cooccurrence", "CoOccurrence"),
    ("stream.scoring.calibration", "WindowedPlatt"),
    ("stream.scoring.expert_mixture", "ExpertMixture"),
    ("stream.scoring.offers", "OfferPolicy"),
    ("stream.scoring.online_btyd", "BtydExpert"),
    ("stream.scoring.online_churn", "ChurnBlend"),
    ("stream.scoring.online_interest", "InterestBlend"),
    ("stream.scoring.tiers", "SpendTiers"),
)

#: Names resolved to a guard or a narrowed stand-in instead of the real object.
_STAND_INS: dict[tuple[str, str], Callable[..., Any]] = {
    ("river._river_rust.drift", "AdaptiveWindowing"): _AdaptiveWindowingGuard,
    ("river._river_rust.stats", "RsRollingROCAUC"): _RollingROCAUCGuard,
    ("river._river_rust.stats", "RsQuantile"): _QuantileGuard,
    ("river._river_rust.vectordict", "VectorDict"): _vector_dict,
    ("functools", "partial"): _CheckedPartial,
    ("builtins", "getattr"): _clone_of,
    ("numpy", "dtype"): _dtype,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # the name numpy 1.x pickles write
}

#: Every (module, name) a checkpoint may name (what it resolves to is ``allowed()``).
ALLOWED: frozenset[tuple[str, str]] = frozenset(_REAL) | frozenset(_CLASSES) | frozenset(_STAND_INS)


class _NewOnly:
    """Base of the stand-ins of ``_CLASSES``: ``real`` is the class stood in for."""

    real: type

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            raise _refuse(f"a checkpoint may not call {cls.real.__qualname__}(...)")
        return cls.real.__new__(cls.real)


def _new_only(real: type) -> type:
    return type(f"NewOnly{real.__name__}", (_NewOnly,), {"real": real, "__slots__": ()})


def _unwrap(value: Any) -> Any:
    """The real class behind a ``_NewOnly`` stand-in (a partial keeps the class itself)."""
    if isinstance(value, type) and issubclass(value, _NewOnly) and value is not _NewOnly:
        return value.real
    return value


_resolved: dict[tuple[str, str], Any] | None = None


def allowed() -> dict[tuple[str, str], Any]:
    """``ALLOWED`` resolved: (module, name) -> what ``find_class`` returns. The real objects are
    imported here, by shopscore, from the fixed lists above: never by a name a pickle chose."""
    global _resolved
    if _resolved is None:
        import importlib

        table: dict[tuple[str, str], Any] = dict(_STAND_INS)
        for module, name in _REAL:
            table[(module, name)] = getattr(importlib.import_module(module), name)
        for module, name in _CLASSES:
            table[(module, name)] = _new_only(getattr(importlib.import_module(module), name))
        _resolved = table
    return _resolved


# -- the opcode scan --------------------------------------------------------------------------------


def _opcode_table() -> list[int | None]:
    """Per opcode byte: how its argument is laid out (``pickletools``' own descriptors), or
    None for opcodes a checkpoint never has and that are refused."""
    import pickletools

    refused = {"PUT", "PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4"}
    refused |= {"NEXT_BUFFER", "READONLY_BUFFER"}  # out-of-band buffers: none are passed
    table: list[int | None] = [None] * 256
    for op in pickletools.opcodes:
        if op.name in refused:
            continue
        if op.name in ("GLOBAL", "INST"):
            table[ord(op.code)] = _TWO_LINES
        else:
            table[ord(op.code)] = 0 if op.arg is None else op.arg.n
    return table


_TWO_LINES = -100
_LONG_BINPUT = ord("r")
_STOP = ord(".")
_table: list[int | None] | None = None


def scan(data: bytes) -> None:
    """Walk the pickle's opcodes once before it is loaded (arguments are skipped by their
    length, not decoded) and refuse what no checkpoint holds and the C unpickler would act on
    before any check: a memo index far past the memo (``LONG_BINPUT``/``PUT`` with index N
    makes it allocate an N-entry memo: 5 bytes of pickle, 16 GB of memory), an argument longer
    than the data left, persistent ids, extension codes and out-of-band buffers."""
    global _table
    if _table is None:
        _table = _opcode_table()
    table = _table
    n = len(data)
    i = 0
    ops = 0
    while i < n:
        code = data[i]
        i += 1
        ops += 1
        kind = table[code]
        if kind is None:
            raise _refuse(f"opcode {bytes([code])!r} at {i - 1} is not allowed")
        if kind > 0:
            if code == _LONG_BINPUT and int.from_bytes(data[i : i + 4], "little") > ops:
                raise _refuse(f"memo index past the memo at {i - 1}")
            i += kind
        elif kind == 0:
            if code == _STOP:
                if i != n:
                    raise _refuse("bytes after the end of the pickle")
                return
        elif kind == -1:  # up to a newline
            end = data.find(b"\n", i)
            if end < 0:
                raise _refuse("an unterminated text argument")
            i = end + 1
        elif kind == _TWO_LINES:
            end = data.find(b"\n", data.find(b"\n", i) + 1)
            if end < 0 or data.find(b"\n", i) < 0:
                raise _refuse("an unterminated global name")
            i = end + 1
        else:  # a length, then that many bytes
            width = {-2: 1, -3: 4, -4: 4, -5: 8}[kind]
            length = int.from_bytes(data[i : i + width], "little", signed=kind == -3)
            if length < 0:
                raise _refuse(f"a negative length at {i - 1}")
            i += width + length
        if i > n:
            raise _refuse("pickle data was truncated")
    raise _refuse("no STOP opcode")


class SafeUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``ALLOWED``; anything else raises ``CorruptState``."""

    def find_class(self, module: str, name: str) -> Any:
        target = allowed().get((module, name))
        if target is None:
            raise _refuse(f"refusing global {module[:80]}.{name[:80]}")
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise _refuse("persistent ids are not allowed")


def loads(data: bytes) -> Any:
    """Unpickle ``data`` with ``SafeUnpickler``: the object, or ``CorruptState`` (never any
    other exception, including a Rust panic raised by a forged River state)."""
    try:
        scan(data)
        return SafeUnpickler(io.BytesIO(data)).load()
    except CorruptState:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # pyo3's PanicException is a BaseException
        raise _refuse(f"undecodable pickle: {exc!r}"[:300]) from None
