"""Exactly-once on Apache Kafka: SIGKILLs mid-replay, and no scoring is ever seen twice.

With ``SHOPSCORE_PROCESSING_GUARANTEE=exactly_once`` a batch's outputs, changelog writes and
input offsets commit in one Kafka transaction per input partition. The worker is killed with
SIGKILL at random points of a backlog, three times; a ``read_committed`` consumer of every
score topic then sees each scoring (user, trigger, event time) once (at-least-once would show the scorings of
every redelivered batch again), every user is scored, and every user's features equal the
offline computation. The embedded broker has no transactions: there the setting is refused in
one line (``tests/stream/tools/test_cli_errors.py``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.contract.topics import OUTPUT_TOPICS
from stream.settings import Settings
from stream.tools.apache_kafka import on_kafka
from stream.tools.generator import GeneratorConfig, write_log

pytestmark = pytest.mark.broker

KILLS = 3


def committed(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every committed record of a contract topic (``read_committed``), as (key, value)."""

    async def read() -> list[tuple[bytes | None, bytes | None]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers(),
            group_id=None,
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            tps = [TopicPartition(settings.topic(topic), p) for p in range(settings.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)  # the last stable offsets
            out: list[tuple[bytes | None, bytes | None]] = []
            quiet = 0
            while quiet < 3:  # up to the ends, or 3 s without a record (markers at the end)
                if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                    break
                batch = await consumer.getmany(*tps, timeout_ms=1_000)
                quiet = 0 if batch else quiet + 1
                for records in batch.values():
                    out.extend((r.key, r.value) for r in records)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(read())


def test_three_kill_9s_never_show_a_scoring_twice(
    kafka, settings, kill_repeatedly, wait, helpers, settle, wait_lag_zero, tmp_path
) -> None:
    settings = on_kafka(settings, kafka.url, processing_guarantee="exactly_once")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    log = tmp_path / "log.jsonl"
    write_log(GeneratorConfig(users=200, days=15, seed=19, duplicate_fraction=0.01), log)
    expected, _ = helpers.offline_views(log, int(time.time() * 1000))
    published = helpers.replay_cli(settings, log)

    worker, killed_at = kill_repeatedly(settings, KILLS, published, rng)
    print(f"exactly-once: seed {seed}, killed after {killed_at} messages")
    wait_lag_zero([worker])
    settle([worker.url], expected)

    # A scoring: (user, trigger, event time). Idle re-scorings all have trigger "clock", one
    # per tick: their tick's time tells them apart. Committed outputs are visible once the
    # worker's next commit (every few seconds) ends their transaction.
    seen: dict[str, Counter[tuple[bytes | None, str, int]]] = {}

    def all_scored() -> bool:
        for topic in OUTPUT_TOPICS:
            messages = [(k, orjson.loads(v or b"{}")) for k, v in committed(settings, topic)]
            seen[topic] = Counter((k, m["trigger"], m["ts"]) for k, m in messages)
        scored = {key.decode() for key, _trigger, _ts in seen["scores.churn"] if key}
        return set(expected) <= scored

    wait(all_scored, 60, 2.0)
    twice = {t: [k for k, n in c.items() if n > 1][:3] for t, c in seen.items()}
    assert not any(twice.values()), (seed, killed_at, twice)
