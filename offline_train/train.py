"""``shopscore train``: replay a log, train the four models, evaluate them on the later period.

For each model it writes ``OUT/NAME/``: ``model.keras`` (the serving graph), ``report.json``
(held-out metrics next to baselines), ``meta.json`` (inputs, feature schema, data span) and
``heldout.npz`` (held-out inputs that ``shopscore export`` uses for its parity check).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from offline_train import metrics
from offline_train.backend import keras_backend
from offline_train.dataset import DatasetConfig, TrainingSets, build_training_sets
from offline_train.evaluate import churn_report, interest_report, purchase_power_report, recs_report
from offline_train.logs import read_events
from stream.features import FEATURE_NAMES, FEATURE_VERSION
from stream.models.inputs import PAIR_FEATURES, category_bucket

__all__ = ["MODEL_NAMES", "TrainConfig", "train"]

MODEL_NAMES = ("churn", "purchase_power", "interest", "cart_recs")
Echo = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; recorded in each model's ``meta.json``."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    epochs: int = 25
    #: The interest model has the most examples and converges in about 12 epochs (later ones
    #: moved held-out hit-rates by < 0.001); the cap keeps it near a minute on 2 cores.
    interest_epochs: int = 12
    patience: int = 3
    batch_size: int = 512
    learning_rate: float = 3e-3
    threads: int = 2
    seed: int = 0
    interest_k: int = 3
    recs_k: int = 10
    heldout_rows: int = 1000
    #: Cap on the candidate rows the recommender trains on (sampled by point).
    max_recs_rows: int = 600_000


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def train(
    log: str | Path,
    out: str | Path,
    config: TrainConfig | None = None,
    echo: Echo = print,
    names: tuple[str, ...] = MODEL_NAMES,
) -> dict[str, dict[str, Any]]:
    """Train ``names`` from ``log`` into ``out``; returns each model's evaluation report."""
    config = config or TrainConfig()
    _tf, keras = keras_backend(config.threads, config.seed)
    started = time.perf_counter()
    events = read_events(log)
    echo(f"read {events.n_events:,} events of {events.n_users:,} users from {log}")
    sets = build_training_sets(
        events,
        config.dataset,
        progress=lambda n, total: (
            echo(f"replay {n:,}/{total:,} events") if n % 500_000 == 0 else None
        ),
    )
    del events
    if sets.rejected:
        echo(f"rejected by the cleaning rules: {sets.rejected}")
    echo(
        f"training sets in {time.perf_counter() - started:.0f}s: {len(sets.cutoffs.t):,} cutoff "
        f"rows, {len(sets.interest.t):,} interest points, {len(sets.recs.t):,} cart points; "
        f"validation from {_iso(sets.split.split_ts)}"
    )
    out = Path(out)
    trainers = {
        "churn": _train_churn,
        "purchase_power": _train_purchase_power,
        "interest": _train_interest,
        "cart_recs": _train_cart_recs,
    }
    reports = {}
    for name in names:
        t0 = time.perf_counter()
        echo(f"{name}: training")
        directory = out / name
        directory.mkdir(parents=True, exist_ok=True)
        report, meta = trainers[name](keras, sets, config, directory, echo)
        meta = _meta(name, sets, config, log, meta, report)
        meta["training_seconds"] = round(time.perf_counter() - t0, 1)
        _write_json(directory / "report.json", report)
        _write_json(directory / "meta.json", meta)
        reports[name] = report
        echo(f"{name}: {_one_line(report)}  ({meta['training_seconds']:.0f}s)")
    return reports


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _one_line(report: dict[str, Any]) -> str:
    parts = [
        f"{k} {v['model']:.4g} vs {v['baseline']:.4g}{'' if v['beats_baseline'] else ' (worse)'}"
        for k, v in report["metrics"].items()
    ]
    verdict = "beats its baseline" if report["beats_baseline"] else "does NOT beat its baseline"
    return "; ".join(parts) + f"  -> {verdict}"


def _meta(
    name: str,
    sets: TrainingSets,
    config: TrainConfig,
    log: str | Path,
    meta: dict[str, Any],
    report: dict[str, Any],
) -> dict[str, Any]:
    split = sets.split
    return {
        "name": name,
        "schema_hash": config.dataset.features.schema_hash(),
        "feature_settings": config.dataset.features.settings(),
        "feature_version": FEATURE_VERSION,
        "feature_names": list(FEATURE_NAMES),
        "training_data": {
            "log": str(log),
            "events": sets.n_events,
            "users": sets.n_users,
            "rejected": sets.rejected,
            "first_event": _iso(split.first_ts),
            "last_event": _iso(split.last_ts),
            "validation_from": _iso(split.split_ts),
            "train_examples": report["n_train"],
            "validation_examples": report["n_validation"],
        },
        "config": {
            "epochs": config.epochs,
            "interest_epochs": config.interest_epochs,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "seed": config.seed,
            "dataset": {k: v for k, v in asdict(config.dataset).items() if k != "features"},
        },
        **meta,
    }


# -- fitting -----------------------------------------------------------------------------------


def _epoch_line(keras: Any, name: str, epochs: int, echo: Echo) -> Any:
    class EpochLine(keras.callbacks.Callback):
        """One progress line per epoch (stderr in the CLI)."""

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            echo(
                f"  {name:<15} epoch {epoch + 1:>2}/{epochs}  loss {logs.get('loss', math.nan):.4f}"
                f"  monitor {logs.get('val_loss', math.nan):.4f}  {time.perf_counter() - self._t0:.1f}s"
            )

    return EpochLine()


def _take(x: Any, idx: np.ndarray) -> Any:
    return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]


def _fit(
    keras: Any,
    model: Any,
    x: Any,
    y: np.ndarray,
    t: np.ndarray,
    *,
    name: str,
    loss: str,
    config: TrainConfig,
    echo: Echo,
    class_weight: dict[int, float] | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
) -> None:
    """Fit with early stopping on the *latest 15 % of the training period* (never on the
    held-out period, which stays untouched for the report)."""
    order = np.argsort(t, kind="stable")
    cut = int(len(order) * 0.85)
    fit_idx, monitor_idx = np.sort(order[:cut]), np.sort(order[cut:])
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss)
    model.fit(
        _take(x, fit_idx),
        y[fit_idx],
        validation_data=(_take(x, monitor_idx), y[monitor_idx]),
        epochs=epochs or config.epochs,
        batch_size=batch_size or config.batch_size,
        class_weight=class_weight,
        shuffle=True,
        verbose=0,
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=config.patience, restore_best_weights=True
            ),
            _epoch_line(keras, name, epochs or config.epochs, echo),
        ],
    )


def _predict(model: Any, x: Any) -> np.ndarray:
    out = model.predict(x, batch_size=4096, verbose=0)
    return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


def _balanced_weights(y: np.ndarray) -> dict[int, float]:
    """Weights that make both classes count as much in the loss (``n / (2 n_class)``)."""
    n, n_pos = len(y), float(y.sum())
    if n_pos in (0.0, float(n)):
        raise ValueError("only one class in the training labels")
    return {0: n / (2 * (n - n_pos)), 1: n / (2 * n_pos)}


def _inputs_spec(model: Any) -> list[dict[str, Any]]:
    return [
        {"name": i.name, "shape": [None, *i.shape[1:]], "dtype": str(np.dtype(i.dtype))}
        for i in model.inputs
    ]


def _save(
    model: Any, directory: Path, heldout: dict[str, np.ndarray], config: TrainConfig
) -> dict[str, Any]:
    model.save(directory / "model.keras")
    rows = len(next(iter(heldout.values())))
    pick = np.random.default_rng(config.seed).permutation(rows)[: config.heldout_rows]
    np.savez_compressed(
        directory / "heldout.npz", **{k: v[np.sort(pick)] for k, v in heldout.items()}
    )
    return {"inputs": _inputs_spec(model)}


# -- the four models ---------------------------------------------------------------------------


def _train_churn(
    keras: Any, sets: TrainingSets, config: TrainConfig, directory: Path, echo: Echo
) -> tuple[dict[str, Any], dict[str, Any]]:
    from offline_train.models import AGNOSTIC_COLUMNS, build_churn

    c, split = sets.cutoffs, sets.split
    end = c.t + config.dataset.churn_horizon_ms
    tr, va = split.train(c.t, end), split.validation(c.t, end)
    x_tr, y_tr = c.features[tr], c.churn[tr]
    weights = _balanced_weights(y_tr)
    shift = math.log(weights[0] / weights[1])  # back from the balanced prior to the real one
    train_model, served = build_churn(x_tr, shift)
    _fit(keras, train_model, x_tr, y_tr, c.t[tr], name="churn", loss="binary_crossentropy",
         config=config, echo=echo, class_weight=weights)  # fmt: skip
    threshold = metrics.best_f1_threshold(y_tr, _predict(served, x_tr))
    p_va = _predict(served, c.features[va])
    report = churn_report(c.churn[va], p_va, threshold, x_tr, y_tr, c.features[va])
    report.update(n_train=int(tr.sum()), n_validation=int(va.sum()))
    meta = _save(served, directory, {"features": c.features[va]}, config)
    meta["extra"] = {
        "horizon_days": config.dataset.churn_horizon_days,
        "threshold": report["threshold"],
        "class_weights": weights,
        "logit_shift": shift,
        "feature_columns": [FEATURE_NAMES[i] for i in AGNOSTIC_COLUMNS],
        "normaliser": "inside the graph: NaN->0, log1p, standardised with training mean/std, clipped to +-6",
    }
    return report, meta


def _train_purchase_power(
    keras: Any, sets: TrainingSets, config: TrainConfig, directory: Path, echo: Echo
) -> tuple[dict[str, Any], dict[str, Any]]:
    from offline_train.models import build_purchase_power

    c, split = sets.cutoffs, sets.split
    end = c.t + config.dataset.spend_horizon_ms
    tr, va = split.train(c.t, end), split.validation(c.t, end)
    scale = max(float(c.spend[tr].mean()), 1e-6)
    train_model, served = build_purchase_power(c.features[tr], scale)
    _fit(keras, train_model, c.features[tr], c.spend[tr] / scale, c.t[tr],
         name="purchase_power", loss="mse", config=config, echo=echo)  # fmt: skip
    pred = _predict(served, c.features[va])
    report = purchase_power_report(c.spend[va], pred, scale, c.spend_before[va])
    report.update(n_train=int(tr.sum()), n_validation=int(va.sum()))
    meta = _save(served, directory, {"features": c.features[va]}, config)
    meta["extra"] = {
        "horizon_days": config.dataset.spend_horizon_days,
        "scale": scale,
        "normaliser": "inside the graph: NaN->0, log1p, standardised with training mean/std, clipped to +-6",
    }
    return report, meta


def _train_interest(
    keras: Any, sets: TrainingSets, config: TrainConfig, directory: Path, echo: Echo
) -> tuple[dict[str, Any], dict[str, Any]]:
    from offline_train.models import build_interest

    s, split = sets.interest, sets.split
    tr, va = split.train(s.t, s.label_ts), split.validation(s.t, s.label_ts)
    model, served = build_interest(s.features[tr])
    x = {"categories": s.sequence, "features": s.features}
    _fit(keras, model, _take(x, tr), s.label[tr], s.t[tr], name="interest",
         loss="sparse_categorical_crossentropy", config=config, echo=echo,
         batch_size=1024, epochs=min(config.epochs, config.interest_epochs))  # fmt: skip
    popular = [bucket for bucket, _n in Counter(s.label[tr].tolist()).most_common()]
    probs = _predict(served, _take(x, va))
    report = interest_report(s.label[va], probs, s.sequence[va], popular, ks=(1, config.interest_k))
    report.update(n_train=int(tr.sum()), n_validation=int(va.sum()))
    meta = _save(served, directory, _take(x, va), config)
    meta["extra"] = {
        "output": "probabilities over category hash buckets (stream.models.inputs.category_bucket)",
        "categories": {c: category_bucket(c) for c, _n in s.categories.most_common()},
        "sequence": "Profile.recent_categories as buckets, left-padded with 0, newest last",
    }
    return report, meta


def _train_cart_recs(
    keras: Any, sets: TrainingSets, config: TrainConfig, directory: Path, echo: Echo
) -> tuple[dict[str, Any], dict[str, Any]]:
    from offline_train.models import build_cart_recs

    r, split = sets.recs, sets.split
    end = r.t + config.dataset.recs_horizon_ms
    train_points = np.flatnonzero(split.train(r.t, end))
    val_points = np.flatnonzero(split.validation(r.t, end))
    sizes = np.diff(r.offsets)
    if sizes[train_points].sum() > config.max_recs_rows:
        rng = np.random.default_rng(config.seed)
        keep = int(len(train_points) * config.max_recs_rows / sizes[train_points].sum())
        train_points = np.sort(rng.choice(train_points, keep, replace=False))

    def rows(points: np.ndarray) -> np.ndarray:
        return np.concatenate([np.arange(r.offsets[p], r.offsets[p + 1]) for p in points])

    tr_rows, va_rows = rows(train_points), rows(val_points)
    x = {"candidate": r.candidate, "cart": r.cart, "pair": r.pair}
    row_t = np.repeat(r.t, sizes)
    model, served = build_cart_recs(r.pair[tr_rows])
    weights = _balanced_weights(r.label[tr_rows])
    _fit(keras, model, _take(x, tr_rows), r.label[tr_rows], row_t[tr_rows], name="cart_recs",
         loss="binary_crossentropy", config=config, echo=echo, class_weight=weights,
         batch_size=2048)  # fmt: skip
    scores = _predict(served, _take(x, va_rows))
    report = recs_report(r, val_points, scores, k=config.recs_k)
    report.update(
        n_train=len(train_points),
        n_validation=len(val_points),
        n_train_rows=len(tr_rows),
    )
    meta = _save(served, directory, _take(x, va_rows), config)
    meta["extra"] = {
        "pair_features": list(PAIR_FEATURES),
        "class_weights": weights,
        "label_horizon_ms": config.dataset.recs_horizon_ms,
        "candidates": "stream.models.inputs.cart_candidates over stream.models.popularity.ItemPopularity",
        "output": "a score per candidate row; rank a cart's candidates by it",
    }
    return report, meta
