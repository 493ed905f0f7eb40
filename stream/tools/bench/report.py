"""The whole run: every phase in order on one broker, and the JSON report."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from stream import __version__
from stream.errors import ShopscoreError
from stream.kafka.admin import check_reachable
from stream.settings import Settings
from stream.tools.apache_kafka import KAFKA_VERSION, ApacheKafka, on_kafka
from stream.tools.bench.backfill import BACKFILL_DAYS, backfill
from stream.tools.bench.baselines import bare_throughput, consume_only_throughput
from stream.tools.bench.common import Progress, phase_settings, stderr_progress
from stream.tools.bench.events import generate, publish_events
from stream.tools.bench.full import full_throughput
from stream.tools.bench.latency import latency
from stream.tools.bench.state import (
    PER,
    measure_rocksdb,
    measure_state,
    sample_changelogs,
    scaled,
)
from stream.tools.broker import EmbeddedBroker, find_broker_binary

__all__ = ["PHASES", "BenchOptions", "run_bench", "versions"]

#: The phases, in the order of their ``[i/PHASES]`` progress lines.
PHASES = 8


@dataclass(frozen=True)
class BenchOptions:
    """What to measure. ``users`` is the population of the state phase (scaled to 100,000
    when smaller); ``latency_s`` how long each fixed-rate producer runs: at ``rate``, then at
    half the measured full-path throughput."""

    events: int = 100_000
    users: int = 100_000
    rate: float = 2_000.0
    latency_s: float = 10.0
    seed: int = 1
    #: Customers of the backfill phase's orders-only history (``stream.tools.bench.backfill``).
    backfill_users: int = 20_000
    #: The broker ``bench`` starts when ``SHOPSCORE_BROKER`` is unset: ``embedded`` (Tansu) or
    #: ``kafka`` (Apache Kafka, ``stream.tools.apache_kafka``).
    broker_kind: str = "embedded"

    @classmethod
    def quick(cls) -> BenchOptions:
        """Small enough for CI (about a minute): proves the command works, no more."""
        return cls(events=5_000, users=2_000, latency_s=2.0, backfill_users=150)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "shopscore": __version__}
    for dist in ("faust-streaming", "aiokafka", "onnxruntime", "river", "orjson", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _tansu_version(settings: Settings) -> str | None:
    try:
        out = subprocess.run(
            [find_broker_binary(settings.broker_bin), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, ShopscoreError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _model_versions(settings: Settings) -> dict[str, str]:
    from stream.models.registry import load_models

    models = load_models(settings.model_dir, trained_for=settings.trained_for())
    return {name: m.version for name, m in models.items()}


def run_bench(
    settings: Settings, options: BenchOptions, *, progress: Progress = stderr_progress
) -> dict[str, Any]:
    """Run every phase and return the report (see the ``stream.tools.bench`` docstring)."""
    if options.events < 100 or options.users < 1 or options.rate <= 0 or options.backfill_users < 1:
        raise ShopscoreError(
            "bench needs --events >= 100, --users >= 1, --backfill-users >= 1 and --rate > 0"
        )
    if options.broker_kind not in ("embedded", "kafka"):
        raise ShopscoreError(f"unknown broker kind {options.broker_kind!r}: embedded or kafka")
    began = time.monotonic()
    models = _model_versions(settings)  # fail fast, before any process starts
    workdir = Path(tempfile.mkdtemp(prefix="shopscore-bench-"))
    tag = f"bench{os.getpid()}x{uuid.uuid4().hex[:6]}"
    broker: EmbeddedBroker | ApacheKafka | None = None
    report: dict[str, Any] = {}
    ok = False
    try:
        if settings.broker is None and options.broker_kind == "kafka":
            progress(f"starting Apache Kafka {KAFKA_VERSION} (first run: its jars via Maven)")
            broker = ApacheKafka(workdir / "kafka", log_path=workdir / "kafka.log").start()
            settings = on_kafka(settings, broker.url)
            broker_info: dict[str, Any] = {
                "kind": "kafka",
                "name": "apache-kafka",
                "version": KAFKA_VERSION,
                "storage": "disk",
                "url": broker.url,
            }
        elif settings.broker is None:
            broker = EmbeddedBroker(
                binary=settings.broker_bin, log_path=workdir / "broker.log"
            ).start()
            settings = settings.with_broker(broker.url)
            broker_info = {
                "kind": "embedded",
                "name": _tansu_version(settings) or "tansu",
                "storage": "memory",
                "url": broker.url,
            }
        else:
            check_reachable(settings)
            broker_info = {"kind": "configured", "url": settings.broker}
        progress(f"broker {settings.broker}; work dir {workdir}")

        def step(i: int, what: str) -> None:
            progress(f"[{i}/{PHASES}] {what}")

        n = options.events
        step(1, f"generating and publishing {n:,} events")
        events = generate(n, options.seed)
        tput = phase_settings(settings, tag, "tput", workdir)
        publish_eps = publish_events(tput, events)
        progress(f"published {n:,} events at {publish_eps:,.0f} events/s")

        step(2, "bare Faust forwarder")
        bare = bare_throughput(tput, n, workdir, progress)

        step(3, f"consume-only Faust agent (take_events({tput.batch_size}, "
                f"{tput.batch_within_s}), the worker's consumer settings)")  # fmt: skip
        consume = consume_only_throughput(tput, n, workdir, progress)

        step(4, "full scoring path (one shopscore worker)")
        full, worker = full_throughput(tput, n, workdir, progress)
        try:
            sample = sample_changelogs(tput)
        finally:
            worker.stop()

        lat_n = max(100, int(options.rate * options.latency_s))
        step(5, f"latency: {lat_n:,} live events at {options.rate:,.0f} events/s")
        lat_events = events[:lat_n] if lat_n <= len(events) else generate(lat_n, options.seed + 1)
        lat, baseline = latency(
            phase_settings(settings, tag, "latency", workdir),
            lat_events,
            options.rate,
            workdir,
            progress,
        )
        lat["saturated"] = lat["rate_eps"] > 0.9 * full["eps"]

        below_rate = max(50.0, round(0.5 * full["eps"], 1))
        below_n = max(100, int(below_rate * options.latency_s))
        step(6, f"latency below saturation: {below_n:,} live events at {below_rate:,.0f} "
                "events/s (half the full path's throughput)")  # fmt: skip
        below, _ = latency(
            phase_settings(settings, tag, "latency-below", workdir),
            events[:below_n] if below_n <= len(events) else generate(below_n, options.seed + 2),
            below_rate,
            workdir,
            progress,
        )

        users = options.users
        step(7, f"state: {users:,} users ({len(sample.users):,} real states repeated), "
                "recovery and RSS")  # fmt: skip
        state = measure_state(
            phase_settings(settings, tag, "state", workdir),
            sample,
            users,
            workdir / "state.log",
        )
        rocks = measure_rocksdb(phase_settings(settings, tag, "state", workdir), users, workdir)
        progress(
            f"state: rocksdb:// first start {rocks['first_start_s']:.1f}s, restart on the same "
            f"data directory {rocks['restart_s']:.1f}s, RSS {rocks['restart_rss_mb']:,.0f} MB"
        )
        sizes = sample.bytes_per_user()
        recovery_100k = scaled(state["recovery_s"], baseline["ready_s"], users)
        rss_100k = scaled(state["worker_rss_mb"], baseline["rss_mb"], users)
        progress(
            f"state: {sizes['mean']:,.0f} B/user; {users:,} users recovered in "
            f"{state['recovery_s']:.1f}s, RSS {state['worker_rss_mb']:,.0f} MB"
        )

        step(8, f"backfill: an orders-only history of {options.backfill_users:,} customers over "
                f"{BACKFILL_DAYS:.0f} days, replayed --until its end")  # fmt: skip
        filled = backfill(
            phase_settings(settings, tag, "backfill", workdir),
            options.backfill_users,
            options.seed,
            workdir,
            progress,
        )

        report = {
            "throughput_eps": full["eps"],
            "bare_throughput_eps": bare["eps"],
            "ratio_to_bare": round(full["eps"] / bare["eps"], 3),
            "consume_only_eps": consume["eps"],
            "ratio_to_consume_only": round(full["eps"] / consume["eps"], 3),
            "latency_ms": lat,
            "latency_below_saturation_ms": below,
            "rss_mb_per_100k_users": round(rss_100k, 1),
            "state_bytes_per_user": sizes["mean"],
            "recovery_s_per_100k_users": round(recovery_100k, 1),
            "rss_mb_per_100k_users_touched": round(
                scaled(state["worker_rss_after_tick_mb"], baseline["rss_mb"], users), 1
            ),
            "rss_mb_per_100k_users_rocksdb": round(
                scaled(rocks["restart_rss_mb"], baseline["rss_mb"], users), 1
            ),
            "restart_s_rocksdb": rocks["restart_s"],
            "backfill_eps": filled["eps"],
            "backfill_s": filled["seconds"],
            "ratio_backfill_to_throughput": round(filled["eps"] / full["eps"], 3),
            "measured_users": users,
            "scaled_to_100k": users < PER,
            "scaling": (
                "linear above an empty worker (baseline): baseline + (measured - baseline) "
                f"* 100000 / {users}"
                if users < PER
                else "measured directly"
            ),
            "throughput": {
                "full": full,
                "bare": bare,
                "consume_only": consume,
                "publish_eps": publish_eps,
            },
            "backfill": filled,
            "state": {
                **state,
                "rocksdb": rocks,
                "bytes_per_user": sizes,
                "sample_users": len(sample.users),
                "empty_worker": baseline,
            },
            "versions": versions(),
            "models": models,
            "broker": broker_info,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "settings": {
                "partitions": settings.partitions,
                "batch_size": settings.batch_size,
                "batch_within_s": settings.batch_within_s,
                "store": settings.store,
                "processing_guarantee": settings.processing_guarantee,
            },
            "options": dataclasses.asdict(options),
            "elapsed_s": round(time.monotonic() - began, 1),
        }
        ok = True
    finally:
        if broker is not None:
            broker.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            progress(f"logs kept in {workdir}")
    return report
