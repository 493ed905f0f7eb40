"""A small generated log, replayed once per session into training sets (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from offline_train.dataset import DatasetConfig, TrainingSets, build_training_sets
from offline_train.logs import EventList, read_events
from stream.tools.generator import GeneratorConfig, write_log

#: Short horizons so a 40-day log has a training and a validation period.
SMALL = DatasetConfig(
    churn_horizon_days=7,
    spend_horizon_days=7,
    warmup_days=3,
    recs_horizon_ms=3_600_000,
    max_cutoff_rows=4_000,
    max_interest_points=4_000,
    max_recs_points=1_500,
)


@pytest.fixture(scope="session")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "log.jsonl"
    write_log(GeneratorConfig(users=150, days=40, seed=11), path)
    return path


@pytest.fixture(scope="session")
def small_events(small_log: Path) -> EventList:
    """The log's cleaned events, in memory (the lazy ``EventLog`` decodes them per pass)."""
    return EventList.of(read_events(small_log))


@pytest.fixture(scope="session")
def small_sets(small_log: Path) -> TrainingSets:
    return build_training_sets(read_events(small_log), SMALL)
