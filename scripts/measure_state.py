"""Measure per-user state size, worker RSS and recovery time for N users (default 100,000).

    .venv/bin/python scripts/measure_state.py [--users 100000] [--sample-users 5000]

Builds real user states by replaying a generated log through the feature core (``sample``
users, 30 days), then writes ``--users`` states (the sample, repeated under new user ids) to a
worker's changelog topic on an embedded broker and starts a worker on it: the time until
``/health`` is ready is the recovery time, and its RSS then is the memory for that population.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from aiokafka import AIOKafkaProducer

from offline_train.replay import replay_log
from stream.broker import EmbeddedBroker, free_port
from stream.embedded import WorkerProcess
from stream.features import FeatureConfig, encode_state
from stream.generator import GeneratorConfig, write_log
from stream.settings import Settings
from stream.topics import ensure_topics


async def fill_changelog(settings: Settings, states: list[bytes], users: int) -> None:
    await ensure_topics(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(), linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    topic = f"{settings.app_id}-users-changelog"
    pending = []
    for i in range(users):
        user_id = f"m{i:07d}"
        state = states[i % len(states)]
        # Same state, another user id: rewrite the id field of the encoded array.
        value = state.replace(state.split(b",", 2)[1], json.dumps(user_id).encode(), 1)
        pending.append(await producer.send(topic, key=user_id.encode(), value=value))
        if len(pending) >= 5000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--sample-users", type=int, default=5_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shopscore-state-"))
    log = work / "log.jsonl"
    write_log(GeneratorConfig(users=args.sample_users, days=30, seed=3), log)
    replayed = replay_log(log, FeatureConfig())
    encoded = [encode_state(s) for s in replayed.states.values()]
    sizes = [len(b) for b in encoded]
    result: dict[str, object] = {
        "sample_users": len(encoded),
        "state_bytes_per_user_mean": round(statistics.mean(sizes), 1),
        "state_bytes_per_user_p95": sorted(sizes)[int(0.95 * len(sizes))],
    }
    with EmbeddedBroker() as broker:
        settings = Settings(
            broker=broker.url,
            app_id="measure",
            web_port=free_port(),
            data_dir=work / "data",
            log_level="warning",
        )
        started = time.monotonic()
        asyncio.run(fill_changelog(settings, encoded, args.users))
        result["changelog_fill_s"] = round(time.monotonic() - started, 1)
        worker = WorkerProcess(settings, log_path=work / "worker.log").start()
        try:
            started = time.monotonic()
            worker.wait_ready(timeout=1800)
            recovery = time.monotonic() - started
            rss = psutil.Process(worker.proc.pid).memory_info().rss
            result.update(
                users=args.users,
                recovery_s=round(recovery, 1),
                recovery_s_per_100k_users=round(recovery / args.users * 1e5, 1),
                worker_rss_mb=round(rss / 2**20, 1),
                rss_mb_per_100k_users=round(rss / args.users * 1e5 / 2**20, 1),
            )
        finally:
            worker.stop()
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
