"""``shopscore export``: Keras → ONNX (tf2onnx), checked against Keras, with a manifest.

For every ``MODELS/NAME/model.keras`` written by ``shopscore train`` it writes ``OUT/NAME.onnx``
and ``OUT/NAME.json``. The export is refused (``ExportError``, nothing written) unless
onnxruntime reproduces Keras on the model's held-out inputs within ``tolerance`` (1e-5) and a
batch call equals the same rows scored one at a time. The manifest carries what the service
checks (feature schema hash, sha256 of the file) and what a reader wants (version, inputs,
training data span, evaluation figures, parity and timing).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from offline_train.backend import keras_backend
from stream.errors import ExportError, TrainingError
from stream.models.registry import MANIFEST_FORMAT

__all__ = ["OPSET", "TOLERANCE", "export_all", "export_model"]

OPSET = 17
#: Parity: |keras - onnx| <= TOLERANCE * max(1, |keras|). For probabilities and scores (<= 1)
#: that is an absolute 1e-5; for amounts of money (thousands) it is relative, because float32
#: itself cannot resolve 1e-5 there (its spacing at 1,000 is 6e-5).
TOLERANCE = 1e-5
Echo = Callable[[str], None]


def export_all(
    models_dir: str | Path, out_dir: str | Path, echo: Echo = print, threads: int = 2
) -> dict[str, dict[str, Any]]:
    """Export every trained model under ``models_dir``; returns the manifests by name."""
    models_dir = Path(models_dir)
    found = sorted(p.parent for p in models_dir.glob("*/model.keras"))
    if not found:
        raise TrainingError(
            f"no trained model under {models_dir} (expected NAME/model.keras): "
            f"run shopscore train --data LOG --out {models_dir} first"
        )
    return {d.name: export_model(d, out_dir, echo=echo, threads=threads) for d in found}


def export_model(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    echo: Echo = print,
    threads: int = 2,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Convert one trained model, check parity, write ``NAME.onnx`` + ``NAME.json``."""
    tf, keras = keras_backend(threads)
    import onnxruntime as ort
    import tf2onnx

    import offline_train.layers  # noqa: F401  (registers the custom layers for loading)

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    name = model_dir.name
    try:
        meta = json.loads((model_dir / "meta.json").read_text())
        report = json.loads((model_dir / "report.json").read_text())
        with np.load(model_dir / "heldout.npz") as npz:
            heldout = {k: npz[k] for k in npz.files}
        model = keras.models.load_model(model_dir / "model.keras")
    except (OSError, ValueError) as exc:
        raise ExportError(f"{model_dir}: not a complete trained model ({exc}); retrain") from None

    specs = meta["inputs"]
    signature = [
        tf.TensorSpec([None, *s["shape"][1:]], tf.as_dtype(s["dtype"]), name=s["name"])
        for s in specs
    ]
    echo(f"{name}: converting with tf2onnx (opset {OPSET})")
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=OPSET)
    blob = proto.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name

    feed = {s["name"]: heldout[s["name"]].astype(s["dtype"]) for s in specs}
    ordered = [feed[s["name"]] for s in specs]
    keras_out = np.asarray(
        model.predict(ordered[0] if len(ordered) == 1 else ordered, batch_size=1024, verbose=0)
    )
    onnx_out = session.run([output], feed)[0]
    diff, excess = _parity(keras_out, onnx_out, tolerance)
    if not excess <= 1.0:  # also catches NaN
        raise ExportError(
            f"{name}: ONNX output differs from Keras by {diff:.3g} (more than {tolerance:g} "
            f"x max(1, |output|)) on {len(onnx_out)} held-out rows; not exported"
        )
    singles_n = min(32, len(onnx_out))
    singles = np.concatenate(
        [session.run([output], {k: v[i : i + 1] for k, v in feed.items()})[0] for i in range(singles_n)]
    ) if singles_n else onnx_out[:0]  # fmt: skip
    batch_diff, batch_excess = _parity(onnx_out[:singles_n], singles, tolerance)
    if not batch_excess <= 1.0:
        raise ExportError(
            f"{name}: a batch call differs from {singles_n} single calls by {batch_diff:.3g}"
        )
    echo(f"{name}: parity ok: max |keras - onnx| = {diff:.2e} on {len(onnx_out)} held-out rows")
    timing = _timing(model, session, output, feed, specs)

    digest = hashlib.sha256(blob).hexdigest()
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": f"{name}-{digest[:12]}",
        "file": f"{name}.onnx",
        "sha256": digest,
        "schema_hash": meta["schema_hash"],
        "feature_settings": meta.get("feature_settings"),
        "feature_version": meta["feature_version"],
        "feature_names": meta["feature_names"],
        "inputs": specs,
        "outputs": [
            {"name": o.name, "shape": [None if not isinstance(d, int) else d for d in o.shape]}
            for o in session.get_outputs()
        ],
        "opset": OPSET,
        "training_data": meta["training_data"],
        "evaluation": report,
        "parity": {
            "rows": len(onnx_out),
            "max_abs_diff": diff,
            "batch_vs_single_rows": singles_n,
            "batch_vs_single_max_abs_diff": batch_diff,
            "tolerance": tolerance,
        },
        "timing_batch_1000_ms": timing,
        "extra": meta.get("extra", {}),
        "config": meta.get("config", {}),
        "exported_with": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnxruntime": ort.__version__,
            "python": platform.python_version(),
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.onnx").write_bytes(blob)
    (out_dir / f"{name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    echo(
        f"{name}: wrote {out_dir / (name + '.onnx')} ({len(blob) / 1024:.0f} KiB), version "
        f"{manifest['version']}; batch of 1000: keras {timing['keras']:.1f} ms, "
        f"onnxruntime {timing['onnxruntime']:.1f} ms"
    )
    return manifest


def _parity(reference: np.ndarray, other: np.ndarray, tolerance: float) -> tuple[float, float]:
    """Max absolute difference, and the worst ratio of a difference to its allowance
    (``tolerance * max(1, |reference|)``): above 1 fails.

    >>> _parity(np.array([0.5, 2000.0]), np.array([0.500001, 2000.001]), 1e-5)[1] < 1
    True
    """
    if not reference.size:
        return 0.0, 0.0
    gap = np.abs(reference.astype(np.float64) - other.astype(np.float64))
    allowance = tolerance * np.maximum(1.0, np.abs(reference.astype(np.float64)))
    return float(gap.max()), float((gap / allowance).max())


def _timing(
    model: Any, session: Any, output: str, feed: dict[str, np.ndarray], specs: list[dict[str, Any]]
) -> dict[str, float]:
    """Median wall time of scoring 1,000 held-out rows (repeated if fewer), Keras vs ONNX."""
    rows = len(next(iter(feed.values())))
    if not rows:
        return {"keras": float("nan"), "onnxruntime": float("nan")}
    idx = np.arange(1000) % rows
    batch = {k: v[idx] for k, v in feed.items()}
    as_list = [batch[s["name"]] for s in specs]
    keras_input = as_list[0] if len(as_list) == 1 else as_list

    def median_ms(fn: Callable[[], object]) -> float:
        fn()  # warm-up (graph tracing, allocations)
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - t0) * 1000)
        return round(float(np.median(runs)), 3)

    return {
        "keras": median_ms(lambda: model.predict_on_batch(keras_input)),
        "onnxruntime": median_ms(lambda: session.run([output], batch)),
    }
