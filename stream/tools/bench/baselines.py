"""Phases 2 and 3: the Faust baselines the full scoring path is compared with.

Each is a bare Faust app in a child process (``python -m stream.tools.bench forward TOPIC``
or ``... consume``), built from the worker's own ``faust_app_options`` (``stream.kafka``), so
its consumer settings are the worker's:

- the **bare forwarder** consumes the input topics and forwards every message unchanged to
  one topic, one ``send`` per message; its throughput ends at the last forwarded record's
  Kafka timestamp;
- the **consume-only** agent reads Faust's own ``take_events(batch_size, batch_within_s)``
  batches (the worker's agent batches with ``stream.kafka.intake``) and only counts them; its
  throughput ends at the batch that completed the count (the agent's own clock, stamped as
  each batch arrives).

Both serve ``GET /count``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from stream.contract.events import INPUT_TOPICS
from stream.settings import Settings
from stream.tools.bench.common import Progress, budget, poll_reached, poll_started, stop_process
from stream.tools.bench.records import create_topics, read_until
from stream.tools.broker import _die_with_parent, free_port

__all__ = [
    "bare_throughput",
    "consume_only_app",
    "consume_only_throughput",
    "forwarder_app",
    "run_app",
]


def _faust_app(settings: Settings) -> Any:
    """A Faust app with the worker's options (no tables: the memory store) and its fixes."""
    import faust

    from stream.kafka.compat import install as install_kafka_compat
    from stream.kafka.options import faust_app_options

    install_kafka_compat()
    return faust.App(settings.app_id, **faust_app_options(settings, store="memory://"))


def forwarder_app(settings: Settings, out_topic: str) -> Any:
    """A bare Faust app: consume the input topics, forward every message unchanged.

    ``GET /count`` says how many messages it has forwarded.
    """
    app = _faust_app(settings)
    inputs = app.topic(*(settings.topic(t) for t in INPUT_TOPICS))
    out = app.topic(out_topic)
    forwarded = [0]

    async def forward(stream: Any) -> None:
        async for event in stream.events():
            await out.send(key=event.message.key, value=event.message.value)
            forwarded[0] += 1

    app.agent(inputs, name="bench.forward")(forward)

    @app.page("/count")
    async def count(web: Any, request: Any) -> Any:
        return web.json({"forwarded": forwarded[0]})

    return app


def consume_only_app(settings: Settings) -> Any:
    """A Faust agent over the input topics that reads ``take_events`` batches of the worker's
    size and does nothing else but count them.

    ``GET /count``: ``consumed``, and the wall times (s) at which the first batch arrived and
    the last one counted so far did (``first_s``, ``last_s``; null before any).
    """
    app = _faust_app(settings)
    inputs = app.topic(*(settings.topic(t) for t in INPUT_TOPICS))
    seen: dict[str, Any] = {"consumed": 0, "first_s": None, "last_s": None}

    async def consume(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, settings.batch_within_s):
            now = time.time()
            if seen["first_s"] is None:
                seen["first_s"] = now
            seen["consumed"] += len(events)
            seen["last_s"] = now

    app.agent(inputs, name="bench.consume")(consume)

    @app.page("/count")
    async def count(web: Any, request: Any) -> Any:
        return web.json(seen)

    return app


def run_app(
    build: Callable[[], Any], event_loop: str = "uvloop"
) -> None:  # pragma: no cover - runs in the child process
    """Build an app with ``build()`` on a fresh event loop of the worker's kind and run it until
    SIGTERM (the child process of a baseline phase)."""
    import faust

    from stream.worker.loop import new_event_loop

    loop = new_event_loop(event_loop)
    faust.Worker(
        build(),
        loop=loop,
        loglevel="warn",
        quiet=True,
        redirect_stdouts=False,
        override_logging=True,
    ).execute_from_commandline()


def _count(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/count", timeout=2.0) as resp:
        return orjson.loads(resp.read())


def _child_settings(settings: Settings, workdir: Path, name: str) -> Settings:
    """The phase's own app id (consumer group), port and data dir; the same input topics."""
    return dataclasses.replace(
        settings,
        app_id=f"{settings.app_id}-{name}",
        web_port=free_port(),
        data_dir=workdir / name,
    )


def _spawn(settings: Settings, args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "stream.tools.bench", *args],
            env={**os.environ, **settings.env()},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )


def bare_throughput(
    settings: Settings, n: int, workdir: Path, progress: Progress
) -> dict[str, Any]:
    """Phase 2: the bare forwarder over the ``n`` events already in ``settings``' topics."""
    bare = _child_settings(settings, workdir, "bare")
    out_topic = settings.topic("bench.forwarded")
    asyncio.run(create_topics(bare, [out_topic]))
    log_path = workdir / "bare.log"
    proc = _spawn(bare, ["forward", out_topic], log_path)
    url = f"http://{bare.web_host}:{bare.web_port}"

    def forwarded() -> float:
        return float(_count(url)["forwarded"])

    try:
        started = poll_started(forwarded, proc, f"the bare forwarder (log {log_path})")
        poll_reached(forwarded, n, proc, "the bare forwarder", budget(n))
    finally:
        stop_process(proc)
    records = read_until(bare, out_topic, n)
    last = max(r.timestamp for r in records) / 1000
    seconds = max(last - started, 1e-3)
    progress(f"bare forwarder: {n:,} events in {seconds:.2f}s = {n / seconds:,.0f} events/s")
    return {
        "events": n,
        "seconds": round(seconds, 3),
        "eps": round(n / seconds, 1),
        "forwarded": len(records),
    }


def consume_only_throughput(
    settings: Settings, n: int, workdir: Path, progress: Progress
) -> dict[str, Any]:
    """Phase 3: the consume-only agent over the same ``n`` events (its own consumer group)."""
    child = _child_settings(settings, workdir, "consume")
    log_path = workdir / "consume.log"
    proc = _spawn(child, ["consume"], log_path)
    url = f"http://{child.web_host}:{child.web_port}"

    def consumed() -> float:
        return float(_count(url)["consumed"])

    try:
        poll_started(consumed, proc, f"the consume-only agent (log {log_path})")
        poll_reached(consumed, n, proc, "the consume-only agent", budget(n))
        seen = _count(url)
    finally:
        stop_process(proc)
    seconds = max(seen["last_s"] - seen["first_s"], 1e-3)
    progress(f"consume-only agent: {n:,} events in {seconds:.2f}s = {n / seconds:,.0f} events/s")
    return {
        "events": n,
        "seconds": round(seconds, 3),
        "eps": round(n / seconds, 1),
        "consumed": int(seen["consumed"]),
        "batch_size": settings.batch_size,
        "batch_within_s": settings.batch_within_s,
    }
