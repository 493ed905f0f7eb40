"""A shop unlike the training data: only orders are sent (no clicks, no carts), as a retailer
exporting its order history would. The ONNX model never saw such users; the blend adapts.

Judged as an operator would: after ``replay --until T``, each user's latest churn score at T
against whether they order within the horizon after it.
"""

from __future__ import annotations

import numpy as np

from offline_train.metrics import roc_auc
from offline_train.online_eval import clean_log, evaluate_log, snapshot_records
from stream.contract.events import Order
from stream.models.registry import load_models
from stream.scoring.engine import DAY_MS, ScoringConfig
from stream.tools.generator import GeneratorConfig, write_log

HORIZON = 30 * DAY_MS


def test_blend_beats_onnx_alone_on_an_orders_only_shop(tmp_path) -> None:
    log = tmp_path / "log.jsonl"
    config = GeneratorConfig(users=2000, days=120, seed=9)
    write_log(config, log)
    orders = [e for e in clean_log(log) if isinstance(e, Order)]
    at = config.start_ms + 75 * DAY_MS  # after ~1.5 horizons of labels; judged up to day 105
    run = evaluate_log(
        orders, load_models(), config=ScoringConfig(churn_horizon_ms=HORIZON), clock_at=[at]
    )
    judged = snapshot_records(run, at, HORIZON)
    y = np.array([label for _r, label in judged])
    assert 0 < y.sum() < len(y)
    blended = roc_auc(y, np.array([r.blended for r, _l in judged]))
    onnx = roc_auc(y, np.array([r.onnx for r, _l in judged]))
    assert blended > onnx, (blended, onnx, len(judged))
