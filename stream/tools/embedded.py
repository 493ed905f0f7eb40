"""``shopscore run``: broker, worker and demo producer on one machine, with live progress.

The supervisor owns shutdown order: stop producing, stop the worker (so it commits), then stop
the broker. Children run in their own process groups and die with this process (PDEATHSIG),
so a Ctrl-C, a SIGTERM or even a SIGKILL of ``run`` leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from stream.errors import ShopscoreError
from stream.settings import Settings
from stream.tools.broker import EmbeddedBroker, _die_with_parent, free_port
from stream.tools.demo import DemoOptions, demo_events
from stream.tools.progress import StatusLine
from stream.tools.replay import ReplaySummary, iter_generated, publish
from stream.tools.running import forget_running, note_running

__all__ = ["DemoOptions", "WorkerProcess", "read_worker_metrics", "run_embedded"]


@dataclass
class WorkerCounts:
    """The worker's counters as read from its ``/metrics``."""

    consumed: float = 0
    applied: float = 0
    rejected: dict[str, float] = field(default_factory=dict)
    duplicates: float = 0
    produced: float = 0
    produced_by_topic: dict[str, float] = field(default_factory=dict)
    lag: float = 0
    users: float = 0

    @property
    def rejected_total(self) -> float:
        return sum(self.rejected.values())


def read_worker_metrics(url: str, timeout: float = 2.0) -> WorkerCounts:
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    counts = WorkerCounts()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "shopscore_events_consumed_total":
                counts.consumed += sample.value
            elif sample.name == "shopscore_events_applied_total":
                counts.applied += sample.value
            elif sample.name == "shopscore_events_rejected_total":
                reason = sample.labels["reason"]
                counts.rejected[reason] = counts.rejected.get(reason, 0) + sample.value
            elif sample.name == "shopscore_events_duplicate_total":
                counts.duplicates += sample.value
            elif sample.name == "shopscore_messages_produced_total":
                counts.produced += sample.value
                topic = sample.labels["topic"]
                counts.produced_by_topic[topic] = (
                    counts.produced_by_topic.get(topic, 0) + sample.value
                )
            elif sample.name == "shopscore_consumer_lag_messages":
                counts.lag += sample.value
            elif sample.name == "shopscore_table_users":
                counts.users += sample.value
    return counts


class WorkerProcess:
    """``shopscore worker`` as a child process, configured through ``SHOPSCORE_*`` variables."""

    def __init__(self, settings: Settings, *, log_path: Path | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://{settings.web_host}:{settings.web_port}"

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.settings.env()}
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        if out is not subprocess.DEVNULL:
            out.close()
        return self

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1.0) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with contextlib.suppress(Exception):
                return json.loads(exc.read())
            return None
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds until ``/health`` says ready; raises if the worker dies or times out."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc is not None and self.proc.poll() is not None:
                raise ShopscoreError(
                    f"worker exited with code {self.proc.returncode} during start-up"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            status = self.health()
            if status and status.get("status") == "ready":
                return time.monotonic() - started
            time.sleep(0.1)
        raise ShopscoreError(f"worker not ready after {timeout:.0f}s")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (Faust stops cleanly and commits), then SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, for recovery tests."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _status(counts: WorkerCounts, sent: int, started: float) -> str:
    elapsed = time.monotonic() - started
    # lag = what the demo has published and the worker not read yet. The worker's own lag
    # gauge trails by up to a second and counts the clock topic; this adds up on screen.
    lag = max(0, sent - int(counts.consumed))
    return (
        f"{elapsed:6.1f}s  sent {sent:>9,}  in {int(counts.consumed):>9,}  "
        f"rejected {int(counts.rejected_total):>6,}  dup {int(counts.duplicates):>5,}  "
        f"out {int(counts.produced):>9,}  lag {lag:>6,}  users {int(counts.users):>6,}"
    )


def run_embedded(settings: Settings, demo: DemoOptions, *, out: Any = None) -> dict[str, Any]:
    """Run everything until ``demo.max_events`` are processed or Ctrl-C; return the summary."""
    out = out or sys.stdout
    t0 = time.monotonic()
    broker: EmbeddedBroker | None = None
    worker: WorkerProcess | None = None
    stop = asyncio.Event()
    interrupted = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    log_dir = Path(settings.data_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    try:
        if settings.broker is None:
            broker = EmbeddedBroker(
                binary=settings.broker_bin, log_path=log_dir / "broker.log"
            ).start()
            settings = settings.with_broker(broker.url)
            print(f"embedded broker  {broker.url}  (memory storage)", file=out, flush=True)
            print(
                f"                 in another shell: export SHOPSCORE_BROKER={broker.url}  "
                "(replay and dump find it by themselves from this directory)",
                file=out,
                flush=True,
            )
        else:
            print(f"broker           {settings.broker}", file=out, flush=True)
        if _port_taken(settings.web_host, settings.web_port):
            port = free_port(settings.web_host)
            print(f"web port {settings.web_port} is taken; using {port}", file=out, flush=True)
            settings = dataclasses.replace(settings, web_port=port)
        worker = WorkerProcess(settings, log_path=log_dir / "worker.log").start()
        print(f"worker           {worker.url}  (log: {worker.log_path})", file=out, flush=True)
        if broker is not None:
            note_running(settings, worker.url)
        ready_s = worker.wait_ready()
        print(f"worker ready in {ready_s:.1f}s; streaming demo events", file=out, flush=True)
        summary = asyncio.run(_stream(settings, demo, worker, stop, t0, out))
        summary["startup_to_first_event_s"] = summary.pop("_first_event_s", None)
        summary["interrupted"] = interrupted
    finally:
        forget_running(settings)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if worker is not None:
            worker.stop()
        if broker is not None:
            broker.stop()
    summary["elapsed_s"] = round(time.monotonic() - t0, 2)
    return summary


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


async def _stream(
    settings: Settings,
    demo: DemoOptions,
    worker: WorkerProcess,
    stop: asyncio.Event,
    t0: float,
    out: Any,
) -> dict[str, Any]:
    status = StatusLine()
    replay = ReplaySummary()
    # Signals arrive on the main thread's handler; mirror them into this loop's Event.
    local_stop = asyncio.Event()

    async def watch_stop() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.05)
        local_stop.set()

    watcher = asyncio.create_task(watch_stop())
    producer = asyncio.create_task(
        publish(
            settings,
            iter_generated(demo_events(demo)),
            rate=demo.rate,
            summary=replay,
            stop=local_stop,
        )
    )
    first_event_s: float | None = None
    counts = WorkerCounts()
    loop = asyncio.get_running_loop()
    while True:
        with contextlib.suppress(OSError):
            counts = await loop.run_in_executor(None, read_worker_metrics, worker.url)
        if first_event_s is None and counts.consumed > 0:
            first_event_s = time.monotonic() - t0
        status.update(_status(counts, replay.published, t0))
        if producer.done():
            producer.result()  # surface publishing errors
            processed = counts.applied + counts.rejected_total + counts.duplicates
            if local_stop.is_set() or processed >= replay.published:
                break  # every event applied (and scored), dead-lettered or recognised
        if worker.proc is not None and worker.proc.poll() is not None:
            raise ShopscoreError(f"worker exited with code {worker.proc.returncode}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(local_stop.wait(), 0.25)
        if local_stop.is_set() and producer.done():
            break
    if not local_stop.is_set():
        # Gauges (users held, lag) refresh every second: read the final figures after that.
        await asyncio.sleep(1.5)
        with contextlib.suppress(OSError):
            counts = await loop.run_in_executor(None, read_worker_metrics, worker.url)
    status.update(_status(counts, replay.published, t0), force=True)
    status.close()
    watcher.cancel()
    if not producer.done():
        await producer
    return {
        "events_sent": replay.published,
        "events_consumed": int(counts.consumed),
        "events_applied": int(counts.applied),
        "rejected": {k: int(v) for k, v in sorted(counts.rejected.items())},
        "duplicates": int(counts.duplicates),
        "messages_out": int(counts.produced),
        "messages_out_by_topic": {
            k: int(v) for k, v in sorted(counts.produced_by_topic.items()) if v
        },
        "users": int(counts.users),
        "replay_events_per_s": replay.as_dict()["events_per_s"],
        "_first_event_s": round(first_event_s, 2) if first_event_s is not None else None,
    }
