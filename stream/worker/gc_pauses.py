"""Garbage-collector pauses: kept out of the scored events' latency, and measured.

A full (generation 2) collection walks every tracked object; in a worker that is the libraries,
the ONNX model wrappers and the River learners as much as the users' states. Measured here
during the latency bench: full collections of 90–127 ms a few times in 15 s, which were the
latency maxima. ``gc.freeze()`` once the app is built moves what exists then (imports, models,
Faust's services) to the permanent generation, which collections skip: the same collections
took 14–16 ms (``docs/benchmarks.md``, "Benchmarks"). Nothing frozen is leaked that would
otherwise be freed: objects built at start-up live as long as the process.

``GcPauses`` reports every collection's duration in ``shopscore_gc_pause_seconds``, so an
operator sees when the users' state itself makes collections long.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

__all__ = ["THRESHOLDS", "GcPauses", "freeze_startup_heap", "tune_collections"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def freeze_startup_heap() -> int:
    """Collect once, then freeze everything alive: the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


#: The worker's collection thresholds (CPython's default: 700, 10, 10).
THRESHOLDS = (2_000, 20, 100)


def tune_collections() -> tuple[int, int, int]:
    """Collect the oldest generation ten times less often than CPython would.

    Users decoded into the state cache are thousands of objects each, and the cache turns
    over as users are touched, so full collections came often and walked all of it: in a
    clock tick re-scoring 20,000 users, 18 full collections took 3.8 s of its 19.8 s (~210 ms
    each). With these thresholds the same tick spent 0.07 s in them and took 15.9 s; an
    orders-only backfill went from 625 to 674 orders/s. The state holds no reference cycles
    to speak of (reference counting frees it), so what waits longer to be collected is small.
    """
    gc.set_threshold(*THRESHOLDS)
    return THRESHOLDS


class GcPauses:
    """Observes each collection's duration per generation (``gc.callbacks``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "shopscore_gc_pause_seconds",
            "Duration of one garbage collection of the worker process (the event loop stops "
            "meanwhile), per generation.",
            ["generation"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self._children = [self.histogram.labels(str(g)) for g in range(3)]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._children[info["generation"]].observe(time.perf_counter() - self._started)

    def install(self) -> GcPauses:
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
