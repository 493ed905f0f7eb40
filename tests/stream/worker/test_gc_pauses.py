"""Garbage-collector pauses are measured per generation, and the start-up heap is frozen."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from stream.worker.gc_pauses import THRESHOLDS, GcPauses, freeze_startup_heap, tune_collections


def _count(registry: CollectorRegistry, generation: str) -> float:
    value = registry.get_sample_value(
        "shopscore_gc_pause_seconds_count", {"generation": generation}
    )
    return value or 0.0


def test_each_collection_is_observed_in_its_generation() -> None:
    registry = CollectorRegistry()
    pauses = GcPauses(registry).install()
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        pauses.remove()
    assert _count(registry, "0") >= 1
    assert _count(registry, "2") >= 1
    assert pauses not in gc.callbacks
    assert registry.get_sample_value("shopscore_gc_pause_seconds_sum", {"generation": "2"}) > 0


def test_freezing_moves_what_is_alive_out_of_collections() -> None:
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_the_worker_collects_its_oldest_generation_less_often() -> None:
    before = gc.get_threshold()
    try:
        assert tune_collections() == gc.get_threshold() == THRESHOLDS
        assert THRESHOLDS[2] > before[2] and THRESHOLDS[0] >= before[0]
    finally:
        gc.set_threshold(*before)
