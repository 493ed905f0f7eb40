"""A planted change in behaviour: the blended churn score beats the ONNX model alone after it.

The generator's change makes heavy, loyal clickers start leaving: the offline model, trained
on the old regime, now ranks them backwards. The online learner sees the labels the log reveals
(orders, or horizons passing) and the blend follows it. Judged against the log's own future on
predictions made after the learner could have seen post-change labels.
"""

from __future__ import annotations

import numpy as np

from offline_train.metrics import roc_auc
from offline_train.online_eval import churn_records, clean_log, evaluate_log
from stream.models.registry import load_models
from stream.scoring.engine import DAY_MS, ScoringConfig
from stream.tools.generator import GeneratorConfig, write_log

HORIZON = 14 * DAY_MS


def test_blend_beats_onnx_alone_after_a_planted_change(tmp_path) -> None:
    log = tmp_path / "log.jsonl"
    config = GeneratorConfig(users=700, days=90, seed=5, change_day=30)
    write_log(config, log)
    run = evaluate_log(
        clean_log(log),
        load_models(),
        config=ScoringConfig(churn_horizon_ms=HORIZON),
        batch_size=500,
    )
    assert run.labels.get("churn", 0) > 1000  # the learner really was taught by the stream
    change = config.start_ms + 30 * DAY_MS
    judged = churn_records(run, HORIZON, since_ms=change + 2 * HORIZON)
    y = np.array([label for _r, label in judged])
    blended = roc_auc(y, np.array([r.blended for r, _l in judged]))
    onnx = roc_auc(y, np.array([r.onnx for r, _l in judged]))
    assert 0 < y.sum() < len(y)
    assert blended > onnx, (blended, onnx, len(judged))
