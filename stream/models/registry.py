"""Loading the shipped ONNX models for scoring: onnxruntime only, never TensorFlow.

Each model is ``NAME.onnx`` plus ``NAME.json`` (its manifest, written by ``shopscore export``).
A model is refused, with a ``ModelError`` that says how to retrain, when its manifest is missing
or unreadable, when the file's sha256 differs from the manifest (a corrupt or swapped file), when
onnxruntime cannot load it, or when it was trained for something else than the worker will feed
it and read from it (``TrainedFor``): another feature schema or other feature settings (its
inputs would mean something else), or, for ``churn``, another churn horizon.

The shipped models live in this package (``stream/models/shipped``) and are found through
``importlib.resources``, so an installed wheel finds them too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from stream.errors import ModelError
from stream.features import FEATURE_NAMES, FEATURE_VERSION, FeatureConfig

__all__ = [
    "MANIFEST_FORMAT",
    "MODEL_NAMES",
    "InputSpec",
    "Model",
    "TrainedFor",
    "load_model",
    "load_models",
    "shipped_dir",
]

#: The models the service scores with, by file stem.
MODEL_NAMES: tuple[str, ...] = ("churn", "purchase_power", "interest", "cart_recs")
MANIFEST_FORMAT = 1

_RETRAIN = (
    "retrain and re-export: pip install 'shopscore[train]', then "
    "shopscore train --data LOG --out DIR && shopscore export --models DIR --out MODELS_DIR"
)


_DAY_MS = 86_400_000


@dataclass(frozen=True)
class TrainedFor:
    """What a worker feeds its models and reads from them (``Settings.trained_for()``): a
    model trained for anything else is refused."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    churn_horizon_ms: int = 30 * _DAY_MS


#: Manifests written before the hash covered the feature settings hashed the names alone;
#: training then always ran with the default settings.
_NAMES_ONLY_HASH = hashlib.sha256(
    (f"v{FEATURE_VERSION}:" + ",".join(FEATURE_NAMES)).encode()
).hexdigest()[:16]


def _check_trained_for(name: str, manifest: Mapping[str, Any], expected: TrainedFor) -> None:
    trained_on = manifest["schema_hash"]
    ours = expected.features.settings()
    legacy_default = trained_on == _NAMES_ONLY_HASH and expected.features == FeatureConfig()
    if trained_on != expected.features.schema_hash() and not legacy_default:
        theirs = manifest.get("feature_settings")
        differ = (
            [
                f"{key}={theirs.get(key)!r} (this worker: {value!r})"
                for key, value in ours.items()
                if theirs.get(key) != value
            ]
            if isinstance(theirs, Mapping)
            else []
        )
        if differ:
            raise ModelError(
                f"model {name!r} was trained with other feature settings: {'; '.join(differ)} "
                "(milliseconds): run the worker with the model's values, or retrain with the "
                f"worker's (`shopscore train` reads the same SHOPSCORE_* variables); {_RETRAIN}"
            )
        raise ModelError(
            f"model {name!r} was trained on feature schema {trained_on}, but this worker "
            f"computes schema {expected.features.schema_hash()}: its inputs would mean "
            f"something else; {_RETRAIN}"
        )
    if name == "churn":
        extra = manifest.get("extra")
        days = extra.get("horizon_days") if isinstance(extra, Mapping) else None
        if isinstance(days, (int, float)) and round(days * _DAY_MS) != expected.churn_horizon_ms:
            raise ModelError(
                f"model 'churn' predicts churn within {days:g} days, but SHOPSCORE_CHURN_HORIZON "
                f"is {expected.churn_horizon_ms / _DAY_MS:g} days: set SHOPSCORE_CHURN_HORIZON="
                f"{days:g}d, or retrain with the worker's horizon (`shopscore train` reads it); "
                f"{_RETRAIN}"
            )


def shipped_dir() -> Traversable:
    """Where the models shipped with this package are (works from a wheel or a checkout)."""
    return resources.files("stream.models") / "shipped"


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape (``None`` = any size, the batch) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype[Any]

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any]) -> InputSpec:
        return cls(
            str(entry["name"]),
            tuple(None if d is None else int(d) for d in entry["shape"]),
            np.dtype(entry["dtype"]),
        )


class Model:
    """One loaded model: ``predict`` runs a whole micro-batch in one onnxruntime call."""

    def __init__(self, name: str, manifest: dict[str, Any], session: ort.InferenceSession):
        self.name = name
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.inputs: tuple[InputSpec, ...] = tuple(
            InputSpec.from_manifest(e) for e in manifest["inputs"]
        )
        self._session = session
        self._output = session.get_outputs()[0].name

    def __repr__(self) -> str:
        shapes = ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in self.inputs)
        return f"Model({self.name!r}, version={self.version!r}, inputs=[{shapes}])"

    def warm_up(self) -> None:
        """Score one row of zeros: onnxruntime allocates its buffers at a session's first run
        (tens of ms), which would otherwise land on the first scored batch's latency."""
        self.predict(
            {
                spec.name: np.zeros(tuple(1 if d is None else d for d in spec.shape), spec.dtype)
                for spec in self.inputs
            }
        )

    def predict(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores for a batch: ``[N]`` for one-output-per-row models (churn probability,
        expected spend, candidate score), ``[N, K]`` for the interest model.

        A single-input model takes the array itself; others take ``{input name: array}``.
        Arrays are cast to the declared dtype; a wrong shape is a ``ModelError``.
        """
        if not isinstance(inputs, Mapping):
            if len(self.inputs) != 1:
                names = [s.name for s in self.inputs]
                raise ModelError(
                    f"model {self.name!r} takes several inputs: pass a dict of {names}"
                )
            inputs = {self.inputs[0].name: inputs}
        feed: dict[str, np.ndarray] = {}
        rows: int | None = None
        for spec in self.inputs:
            if spec.name not in inputs:
                raise ModelError(f"model {self.name!r}: input {spec.name!r} missing")
            array = np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype)
            if array.ndim != len(spec.shape) or any(
                want is not None and got != want
                for got, want in zip(array.shape, spec.shape, strict=True)
            ):
                raise ModelError(
                    f"model {self.name!r}: input {spec.name!r} has shape {array.shape}, "
                    f"expected {tuple(spec.shape)}"
                )
            if rows is not None and array.shape[0] != rows:
                raise ModelError(f"model {self.name!r}: inputs disagree on the batch size")
            rows = array.shape[0]
            feed[spec.name] = array
        if rows == 0:
            return np.zeros((0,), np.float32)
        (out,) = self._session.run([self._output], feed)
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


def _read(source: Traversable | Path, what: str) -> bytes:
    try:
        return source.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {what} ({source}): {exc}; {_RETRAIN}") from None


def load_model(
    name: str,
    directory: Traversable | Path | str | None = None,
    *,
    threads: int = 1,
    trained_for: TrainedFor | None = None,
) -> Model:
    """Load ``NAME.onnx`` checked against ``NAME.json`` (default: the shipped models).

    ``threads`` is onnxruntime's intra-op thread count: 1 suits a worker that scores small
    micro-batches on a shared machine. ``trained_for``: what the model must have been trained
    for (default: the default settings).
    """
    root: Traversable | Path = (
        shipped_dir() if directory is None else Path(directory)
        if isinstance(directory, str) else directory
    )  # fmt: skip
    raw = _read(root / f"{name}.json", f"the manifest of model {name!r}")
    try:
        manifest = json.loads(raw)
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a format-{MANIFEST_FORMAT} manifest")
        if not isinstance(manifest["schema_hash"], str):
            raise ValueError("schema_hash is not a string")
        expected_sha = manifest["sha256"]
        file_name = manifest.get("file", f"{name}.onnx")
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"model {name!r}: unreadable manifest ({exc}); {_RETRAIN}") from None
    _check_trained_for(name, manifest, trained_for or TrainedFor())
    blob = _read(root / file_name, f"model {name!r}")
    if hashlib.sha256(blob).hexdigest() != expected_sha:
        raise ModelError(
            f"model {name!r}: {file_name} does not match its manifest's sha256 "
            f"(corrupt or replaced file); {_RETRAIN}"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for a bad graph
        raise ModelError(
            f"model {name!r}: onnxruntime cannot load it ({exc}); {_RETRAIN}"
        ) from None
    declared = [e["name"] for e in manifest["inputs"]]
    actual = [i.name for i in session.get_inputs()]
    if sorted(declared) != sorted(actual):
        raise ModelError(
            f"model {name!r}: graph inputs {actual} differ from the manifest's {declared}; "
            f"{_RETRAIN}"
        )
    model = Model(name, manifest, session)
    try:
        model.warm_up()
    except Exception as exc:  # loads, but cannot score a row of its declared inputs
        raise ModelError(f"model {name!r}: onnxruntime cannot run it ({exc}); {_RETRAIN}") from None
    return model


def load_models(
    directory: Traversable | Path | str | None = None,
    names: Iterable[str] = MODEL_NAMES,
    *,
    threads: int = 1,
    trained_for: TrainedFor | None = None,
) -> dict[str, Model]:
    """Every model of ``names`` (default: all the service scores with), each checked."""
    return {
        name: load_model(name, directory, threads=threads, trained_for=trained_for)
        for name in names
    }
