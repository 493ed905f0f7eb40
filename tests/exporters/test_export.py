"""End to end on a small generated log: ``shopscore train`` then ``shopscore export``.

Real TensorFlow, tf2onnx and onnxruntime (the ``train`` extra), no mocks. A few hundred users
and two epochs: this checks the pipeline and the contracts, not model quality (the shipped
models' held-out figures are checked in ``tests/stream/models``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from exporters.onnx_export import TOLERANCE, _parity
from stream.errors import ExportError, ModelError
from stream.features import SCHEMA_HASH
from stream.models.registry import MODEL_NAMES, load_models
from stream.settings import Settings
from stream.tools.cli import cli
from stream.tools.generator import GeneratorConfig, write_log

#: What a worker run with the training's settings expects.
TRAINED_FOR = Settings.from_env({"SHOPSCORE_SESSION_GAP": "20m"}).trained_for()

METRICS = {
    "churn": {"auc", "precision", "recall", "f1", "brier"},
    "purchase_power": {"mae", "rmse"},
    "interest": {"hit_rate@1", "hit_rate@3", "mrr"},
    "cart_recs": {"recall@10", "ndcg@10"},
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    log = root / "log.jsonl"
    write_log(GeneratorConfig(users=300, days=85, seed=4), log)
    runner = CliRunner()
    # Trained under a non-default feature setting: the manifests must carry it (one config
    # for training and serving).
    trained = runner.invoke(
        cli,
        ["train", "--data", str(log), "--out", str(root / "trained"), "--epochs", "2"],
        env={"SHOPSCORE_SESSION_GAP": "20m"},
    )
    assert trained.exit_code == 0, trained.output
    exported = runner.invoke(
        cli, ["export", "--models", str(root / "trained"), "--out", str(root / "onnx")]
    )
    assert exported.exit_code == 0, exported.output
    return {
        "root": root,
        "trained": root / "trained",
        "onnx": root / "onnx",
        "train_out": trained.stdout,  # type: ignore[dict-item]
        "train_err": trained.stderr,  # type: ignore[dict-item]
    }


def test_train_writes_model_report_and_heldout_inputs(pipeline) -> None:
    reports = json.loads(pipeline["train_out"])
    assert set(reports) == set(MODEL_NAMES)
    for name in MODEL_NAMES:
        directory = pipeline["trained"] / name
        for file in ("model.keras", "report.json", "meta.json", "heldout.npz"):
            assert (directory / file).is_file(), (name, file)
        report = json.loads((directory / "report.json").read_text())
        assert report == reports[name]
        assert set(report["metrics"]) == METRICS[name]
        for figure in report["metrics"].values():
            assert set(figure) >= {"model", "baseline", "baselines", "beats_baseline"}
            assert np.isfinite(figure["model"]) and np.isfinite(figure["baseline"])
        assert report["n_train"] > 0 and report["n_validation"] > 0


def test_train_shows_progress_per_model_and_epoch(pipeline) -> None:
    err = pipeline["train_err"]
    for name in MODEL_NAMES:
        assert f"{name}: training" in err
        assert f"  {name:<15} epoch  1/2 " in err and f"  {name:<15} epoch  2/2 " in err
        assert f"{name}: " in err and "baseline" in err


def test_export_writes_manifests_that_pass_parity(pipeline) -> None:
    for name in MODEL_NAMES:
        manifest = json.loads((pipeline["onnx"] / f"{name}.json").read_text())
        assert manifest["name"] == name and manifest["version"].startswith(name + "-")
        assert manifest["schema_hash"] == TRAINED_FOR.features.schema_hash() != SCHEMA_HASH
        assert manifest["feature_settings"]["SHOPSCORE_SESSION_GAP"] == 1_200_000
        assert manifest["parity"]["rows"] > 0
        assert manifest["parity"]["batch_vs_single_rows"] > 0
        assert manifest["parity"]["max_abs_diff"] <= TOLERANCE * 1000  # spend is in currency
        assert manifest["evaluation"]["metrics"].keys() == METRICS[name]
        assert (
            manifest["training_data"]["first_event"] < manifest["training_data"]["validation_from"]
        )
        for spec in manifest["inputs"]:
            assert spec["shape"][0] is None and spec["dtype"] in ("float32", "int32")


def test_a_worker_under_other_settings_refuses_the_models(pipeline) -> None:
    with pytest.raises(ModelError, match="SHOPSCORE_SESSION_GAP=1200000"):
        load_models(pipeline["onnx"])  # the default session gap: 30 minutes


def test_exported_models_load_and_batch_equals_singles(pipeline) -> None:
    models = load_models(pipeline["onnx"], trained_for=TRAINED_FOR)
    for name, model in models.items():
        with np.load(pipeline["trained"] / name / "heldout.npz") as npz:
            feed = {k: npz[k][:20] for k in npz.files}
        batch = model.predict(feed)
        singles = np.concatenate(
            [model.predict({k: v[i : i + 1] for k, v in feed.items()}) for i in range(20)]
        )
        assert batch.shape[0] == 20
        np.testing.assert_allclose(batch, singles, rtol=1e-5, atol=1e-6)


def test_parity_rule() -> None:
    probs = np.array([0.2, 0.9], np.float32)
    assert _parity(probs, probs + 5e-6, TOLERANCE)[1] <= 1
    assert _parity(probs, probs + 5e-5, TOLERANCE)[1] > 1
    spend = np.array([2500.0], np.float32)
    assert _parity(spend, spend + 0.01, TOLERANCE)[1] <= 1  # float32 spacing at 2500 is 2.4e-4


def test_export_refuses_a_directory_without_models(tmp_path) -> None:
    result = CliRunner().invoke(
        cli, ["export", "--models", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "no trained model" in result.stderr and "shopscore train" in result.stderr


def test_export_refuses_when_onnx_differs_from_keras(pipeline, tmp_path) -> None:
    """A parity failure is fatal and writes nothing (shown with a tolerance below the float32
    rounding noise between the two runtimes on amounts of money)."""
    from exporters.onnx_export import export_model

    with pytest.raises(ExportError, match="differs from Keras"):
        export_model(
            pipeline["trained"] / "purchase_power", tmp_path, echo=lambda _s: None, tolerance=1e-12
        )
    assert not (tmp_path / "purchase_power.onnx").exists()  # nothing written on failure
