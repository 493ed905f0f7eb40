"""mode's timer-overlap warnings become a counter; every other record still reaches the log."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from stream.worker.quiet_logs import TimerOverlaps


def test_overlap_warnings_are_counted_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    TimerOverlaps(registry).install()
    timers = logging.getLogger("mode.timers")
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            timers.warning(
                "Timer %s is overlapping (interval=%r runtime=%r)",
                "shopscore.release_held",
                0.2,
                0.3,
            )
        timers.warning("Timer %s is overlapping (interval=%r runtime=%r)", "commit", 2.8, 3.1)
        timers.warning("something an operator should read")
    assert [r.getMessage() for r in caplog.records] == ["something an operator should read"]
    value = registry.get_sample_value
    assert value("shopscore_timer_overlaps_total", {"timer": "shopscore.release_held"}) == 3
    assert value("shopscore_timer_overlaps_total", {"timer": "commit"}) == 1


def test_a_new_app_takes_over_the_count() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    TimerOverlaps(first).install()
    TimerOverlaps(second).install()
    logging.getLogger("mode.timers").warning("Timer %s is overlapping", "t")
    assert first.get_sample_value("shopscore_timer_overlaps_total", {"timer": "t"}) is None
    assert second.get_sample_value("shopscore_timer_overlaps_total", {"timer": "t"}) == 1
    assert sum(isinstance(f, TimerOverlaps) for f in logging.getLogger("mode.timers").filters) == 1
