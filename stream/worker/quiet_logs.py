"""Log lines an operator cannot act on, counted in metrics instead of written to the log.

mode warns "Timer X is overlapping" whenever a timer's callback ran longer than its interval.
For the worker's timers that only means a batch held the worker's lock meanwhile (the timer
waits for it): a busy worker, which the batch and lag metrics already show. A newcomer reading
hundreds of such warnings takes the worker for broken, so they become
``shopscore_timer_overlaps_total{timer}`` and the log keeps what needs a person.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter

__all__ = ["TimerOverlaps"]

_OVERLAP = "Timer %s is overlapping"


class TimerOverlaps(logging.Filter):
    """Drops mode's timer-overlap warnings and counts them per timer."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.counter = Counter(
            "shopscore_timer_overlaps",
            "Timer runs that took longer than the timer's interval (mode logs each as a "
            "warning; counted here instead): a worker busy with batches.",
            ["timer"],
            registry=registry,
        )

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_OVERLAP):
            args = record.args if isinstance(record.args, tuple) else ()
            self.counter.labels(str(args[0]) if args else "unknown").inc()
            return False
        return True

    def install(self, logger_name: str = "mode.timers") -> TimerOverlaps:
        """Attach to mode's timer logger, in place of an earlier app's filter (one per process
        counts, the latest app's registry)."""
        logger = logging.getLogger(logger_name)
        for old in [f for f in logger.filters if isinstance(f, TimerOverlaps)]:
            logger.removeFilter(old)
        logger.addFilter(self)
        return self
