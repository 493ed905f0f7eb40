"""Phase 4: the full scoring path, one ``shopscore worker`` over the published events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream.kafka.admin import OUTPUT_TOPICS
from stream.settings import Settings
from stream.tools.bench.common import Progress, budget, poll_reached, poll_started
from stream.tools.bench.records import read_until
from stream.tools.embedded import WorkerProcess, read_worker_metrics

__all__ = ["full_throughput", "produced_by_topic"]


def produced_by_topic(url: str) -> dict[str, float]:
    """The worker's ``shopscore_messages_produced_total`` per contract topic."""
    counts = read_worker_metrics(url)
    return dict(getattr(counts, "produced_by_topic", {}) or {})


def full_throughput(
    settings: Settings, n: int, workdir: Path, progress: Progress
) -> tuple[dict[str, Any], WorkerProcess]:
    """One worker over the ``n`` events; returns the figures and the (still running) worker,
    whose changelogs the state phase samples."""
    worker = WorkerProcess(settings, log_path=workdir / "full.log").start()
    try:
        ready_s = worker.wait_ready(timeout=120)
        started = poll_started(
            lambda: read_worker_metrics(worker.url).consumed,
            worker.proc,
            f"the worker (log {worker.log_path})",
        )
        poll_reached(
            lambda: read_worker_metrics(worker.url).consumed,
            n,
            worker.proc,
            "the worker",
            budget(n),
        )
        counts = read_worker_metrics(worker.url)
        produced = produced_by_topic(worker.url)
    except BaseException:
        worker.stop()
        raise
    last = started
    published: dict[str, int] = {}
    for topic in OUTPUT_TOPICS:
        expected = int(produced.get(topic, 0))
        if not expected:
            continue
        records = read_until(settings, settings.topic(topic), expected)
        published[topic] = len(records)
        last = max(last, max(r.timestamp for r in records) / 1000)
    seconds = max(last - started, 1e-3)
    progress(
        f"full scoring path: {n:,} events in {seconds:.2f}s = {n / seconds:,.0f} events/s "
        f"({sum(published.values()):,} messages out)"
    )
    return {
        "events": n,
        "seconds": round(seconds, 3),
        "eps": round(n / seconds, 1),
        "applied": int(counts.applied),
        "rejected": int(counts.rejected_total),
        "rejected_by_reason": {k: int(v) for k, v in sorted(counts.rejected.items())},
        "messages_out": published,
        "worker_ready_s": round(ready_s, 2),
    }, worker
