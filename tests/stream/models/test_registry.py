"""The runtime loader: shipped models load with onnxruntime alone; bad ones are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stream.contract.events import CartChange, Click, Order, OrderLine
from stream.errors import ModelError
from stream.features import (
    SCHEMA_HASH,
    FeatureConfig,
    ProfileConfig,
    UserState,
    apply_event,
    feature_vector,
)
from stream.features.state import current_profile
from stream.models import MODEL_NAMES, load_model, load_models, shipped_dir
from stream.models.inputs import (
    CATEGORY_BUCKETS,
    SEQ_LEN,
    cart_candidates,
    category_sequence,
    feature_matrix,
    rank_categories,
)
from stream.models.popularity import ItemPopularity
from stream.settings import Settings

T0 = 1_767_225_600_000


@pytest.fixture
def copied(tmp_path: Path) -> Path:
    """The shipped models in a scratch directory, to damage."""
    target = tmp_path / "models"
    target.mkdir()
    for entry in shipped_dir().iterdir():
        if entry.name.endswith((".onnx", ".json")):
            (target / entry.name).write_bytes(entry.read_bytes())
    return target


def _user() -> tuple[UserState, ItemPopularity]:
    state, pop, cfg = UserState("u1"), ItemPopularity(), FeatureConfig()
    events = [
        Click("e1", "u1", T0, "i1", "books", 12.0),
        CartChange("e2", "u1", T0 + 5_000, "i1", "add", "books", 12.0),
        Click("e3", "u1", T0 + 9_000, "i2", "music", 9.0),
        Order("e4", "u1", T0 + 60_000, "o1", (OrderLine("i1", 12.0, 1, "books"),), 12.0),
        Click("e5", "u1", T0 + 90_000, "i3", "books", 20.0),
        CartChange("e6", "u1", T0 + 95_000, "i3", "add", "books", 20.0),
    ]
    for e in events:
        apply_event(state, e, cfg)
        pop.observe(e)
    for n in range(5):  # other shoppers make i4 popular
        pop.observe(CartChange(f"x{n}", "u2", T0 + n, "i4", "add", "books", 5.0))
    return state, pop


def test_shipped_models_load_with_the_current_schema() -> None:
    models = load_models()
    assert set(models) == set(MODEL_NAMES)
    for name, model in models.items():
        assert model.manifest["schema_hash"] == SCHEMA_HASH, name
        assert model.version.startswith(name + "-")
        assert model.manifest["training_data"]["users"] >= 20_000


def test_shipped_manifests_carry_held_out_figures_next_to_baselines() -> None:
    for name in MODEL_NAMES:
        evaluation = load_model(name).manifest["evaluation"]
        assert evaluation["n_validation"] > 0
        for figure in evaluation["metrics"].values():
            assert {"model", "baseline", "baselines", "beats_baseline"} <= set(figure)
        assert evaluation["beats_baseline"], (name, evaluation["losing_metrics"])


def test_predict_on_inputs_built_from_user_state() -> None:
    state, pop = _user()
    cfg = FeatureConfig()
    at = state.max_ts or T0
    features = feature_matrix([feature_vector(state, at, cfg)] * 3)
    profile = current_profile(state, cfg)
    models = load_models()

    churn = models["churn"].predict(features)
    assert churn.shape == (3,) and ((churn >= 0) & (churn <= 1)).all()
    spend = models["purchase_power"].predict(features)
    assert spend.shape == (3,) and (spend >= 0).all()

    sequence = np.asarray([category_sequence(profile)] * 3, np.int32)
    probs = models["interest"].predict({"categories": sequence, "features": features})
    assert probs.shape == (3, CATEGORY_BUCKETS)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    top = rank_categories(probs[0], ["books", "music", "toys"], k=2)
    assert top[0][0] == "books"  # the user's current category leads

    candidates = cart_candidates(profile, pop, at)
    assert "i4" in candidates.items and "i3" not in candidates.items  # never the cart itself
    scores = models["cart_recs"].predict(candidates.inputs())
    assert scores.shape == (len(candidates.items),)


def test_batch_equals_single_calls() -> None:
    model = load_model("churn")
    rng = np.random.default_rng(1)
    x = rng.gamma(1.0, 5.0, size=(16, len(model.manifest["feature_names"]))).astype(np.float32)
    singles = np.concatenate([model.predict(x[i : i + 1]) for i in range(16)])
    np.testing.assert_allclose(model.predict(x), singles, rtol=1e-6, atol=1e-7)


def test_wrong_input_shape_is_a_model_error() -> None:
    model = load_model("interest")
    with pytest.raises(ModelError, match="shape"):
        model.predict({"categories": np.zeros((2, SEQ_LEN + 1), np.int32),
                       "features": np.zeros((2, 45), np.float32)})  # fmt: skip
    with pytest.raises(ModelError, match="several inputs"):
        model.predict(np.zeros((2, 45), np.float32))


def test_mismatched_schema_hash_is_refused_with_how_to_retrain(copied: Path) -> None:
    manifest = json.loads((copied / "churn.json").read_text())
    manifest["schema_hash"] = "0123456789abcdef"
    (copied / "churn.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError) as info:
        load_model("churn", copied)
    message = str(info.value)
    assert "0123456789abcdef" in message and SCHEMA_HASH in message
    assert "shopscore train" in message and "shopscore export" in message


def _trained_with(copied: Path, name: str, config: FeatureConfig) -> None:
    manifest = json.loads((copied / f"{name}.json").read_text())
    manifest["schema_hash"] = config.schema_hash()
    manifest["feature_settings"] = config.settings()
    (copied / f"{name}.json").write_text(json.dumps(manifest))


def test_a_model_trained_under_other_feature_settings_is_refused_naming_them(copied) -> None:
    shorter_sessions = FeatureConfig(profile=ProfileConfig(session_gap_ms=600_000))
    _trained_with(copied, "interest", shorter_sessions)
    with pytest.raises(ModelError) as info:
        load_model("interest", copied)
    message = str(info.value)
    assert "SHOPSCORE_SESSION_GAP=600000 (this worker: 1800000)" in message
    assert "SHOPSCORE_ALLOWED_LATENESS" not in message and "shopscore train" in message
    worker = Settings.from_env({"SHOPSCORE_SESSION_GAP": "10m"})
    assert load_model("interest", copied, trained_for=worker.trained_for()).name == "interest"


def test_every_feature_setting_changes_the_schema_hash() -> None:
    default = FeatureConfig()
    changed = [
        FeatureConfig(allowed_lateness_ms=1),
        FeatureConfig(dedup_horizon_ms=1),
        FeatureConfig(dedup_max_ids=1),
        FeatureConfig(profile=ProfileConfig(session_gap_ms=1)),
        FeatureConfig(profile=ProfileConfig(affinity_half_life_ms=1)),
        FeatureConfig(profile=ProfileConfig(recent=1)),
    ]
    hashes = {c.schema_hash() for c in changed}
    assert len(hashes) == len(changed) and default.schema_hash() not in hashes
    assert default.schema_hash() == SCHEMA_HASH


def test_a_manifest_from_before_settings_were_hashed_counts_as_default_settings(copied) -> None:
    import hashlib

    from stream.features import FEATURE_NAMES, FEATURE_VERSION

    manifest = json.loads((copied / "churn.json").read_text())
    manifest["schema_hash"] = hashlib.sha256(
        (f"v{FEATURE_VERSION}:" + ",".join(FEATURE_NAMES)).encode()
    ).hexdigest()[:16]
    del manifest["feature_settings"]
    (copied / "churn.json").write_text(json.dumps(manifest))
    assert load_model("churn", copied).name == "churn"  # trained, as then, with the defaults
    other = Settings.from_env({"SHOPSCORE_ALLOWED_LATENESS": "2h"}).trained_for()
    with pytest.raises(ModelError, match="feature schema"):
        load_model("churn", copied, trained_for=other)


def test_a_churn_model_for_another_horizon_is_refused(copied: Path) -> None:
    quarter = Settings.from_env({"SHOPSCORE_CHURN_HORIZON": "90d"}).trained_for()
    with pytest.raises(ModelError) as info:
        load_model("churn", copied, trained_for=quarter)
    message = str(info.value)
    assert "within 30 days" in message and "SHOPSCORE_CHURN_HORIZON=30d" in message
    assert load_model("purchase_power", copied, trained_for=quarter).name == "purchase_power"


def test_corrupt_model_file_is_refused(copied: Path) -> None:
    blob = bytearray((copied / "churn.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copied / "churn.onnx").write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="corrupt"):
        load_model("churn", copied)


def test_truncated_model_with_a_matching_checksum_is_refused_by_onnxruntime(copied: Path) -> None:
    import hashlib

    blob = (copied / "churn.onnx").read_bytes()[:100]
    (copied / "churn.onnx").write_bytes(blob)
    manifest = json.loads((copied / "churn.json").read_text())
    manifest["sha256"] = hashlib.sha256(blob).hexdigest()
    (copied / "churn.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        load_model("churn", copied)


def test_missing_or_unreadable_manifest_is_refused(copied: Path, tmp_path: Path) -> None:
    (copied / "churn.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable manifest"):
        load_model("churn", copied)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="cannot read"):
        load_model("churn", empty)
    shutil.rmtree(empty)


def test_the_runtime_loader_never_imports_tensorflow() -> None:
    code = (
        "import sys, numpy as np\n"
        "from stream.models import load_models\n"
        "m = load_models()\n"
        "m['churn'].predict(np.zeros((2, 45), np.float32))\n"
        "bad = [k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
