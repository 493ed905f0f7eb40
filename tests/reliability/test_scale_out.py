"""Scale-out: a second worker joins mid-stream; partitions move, nothing is lost or doubled."""

from __future__ import annotations

import time

import pytest

from stream.tools.broker import free_port
from stream.tools.generator import GeneratorConfig, write_log

pytestmark = [pytest.mark.broker, pytest.mark.both_brokers]


def test_a_second_worker_joining_mid_stream_loses_and_doubles_nothing(
    settings, start_worker, wait, worker_counts, helpers, settle, wait_lag_zero, tmp_path
) -> None:
    log = tmp_path / "log.jsonl"
    write_log(GeneratorConfig(users=300, days=15, seed=19, duplicate_fraction=0.01), log)
    expected, _ = helpers.offline_views(log, int(time.time() * 1000))
    # Published up front: the first worker works through the backlog when the second joins.
    published = helpers.replay_cli(settings, log)
    first = start_worker(settings, name="first")
    wait(lambda: worker_counts(first).consumed >= published // 5, 120, 0.05)
    joined_at = worker_counts(first).consumed
    second = start_worker(settings, name="second", web_port=free_port())
    print(f"scale-out: second worker joined after {joined_at:.0f} of {published} messages")

    # Partitions were rebalanced: both hold some (each serves /health ready only then).
    wait(lambda: all((w.health() or {}).get("assigned_partitions", 0) > 0 for w in (first, second)))
    wait_lag_zero([first, second], at_least=published)
    # Every user's view, asked of either worker (table routing forwards to the owner), equals
    # the offline one: no event lost, none applied twice (redelivered ones count as duplicates).
    settle([first.url, second.url], expected)
    assert all(w.proc is not None and w.proc.poll() is None for w in (first, second))
