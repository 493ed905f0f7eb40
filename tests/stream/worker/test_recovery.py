"""State survives a worker restart through Faust's changelog, graceful or SIGKILL, with no double count."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import pytest

from stream.tools.generator import GeneratorConfig, write_log

pytestmark = [pytest.mark.broker, pytest.mark.both_brokers]


def _helpers():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "worker_ingest", Path(__file__).with_name("test_worker_ingest.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("stop", "store"),
    [("sigterm", "memory://"), ("sigkill", "memory://"), ("sigkill", "rocksdb://")],
)
def test_restarted_worker_recovers_every_users_state(
    settings, start_worker, wait, worker_counts, tmp_path, stop, store
) -> None:
    settings = dataclasses.replace(settings, store=store)
    log = tmp_path / "log.jsonl"
    write_log(GeneratorConfig(users=400, days=20, seed=5, duplicate_fraction=0.02), log)
    helpers = _helpers()
    expected, _ = helpers.offline_views(log, int(time.time() * 1000))
    first = start_worker(settings, name="first")
    # Replay at full speed: the worker is killed while it works through a backlog, the case
    # where cross-topic alignment is exact (see docs/benchmarks.md, "Known limitations").
    replay = subprocess.Popen(
        [sys.executable, "-m", "stream", "replay", str(log)],
        env=settings.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    wait(lambda: worker_counts(first).consumed > 3000, 120)
    if stop == "sigkill":
        first.kill()
    else:
        first.stop()
    second = start_worker(settings, name="second")
    assert replay.wait(timeout=300) == 0
    published = json.loads(replay.stdout.read().strip().splitlines()[-1])["published"]
    wait(lambda: worker_counts(second).lag == 0 and worker_counts(second).consumed > 0, 240)
    mismatches: list = []

    def settled() -> bool:
        mismatches[:] = helpers.view_mismatches(second.url, expected, redelivery=True)
        return not mismatches

    try:
        wait(settled, 240, 2.0)
    except AssertionError:
        pytest.fail(f"{len(mismatches)} users differ, e.g. {mismatches[:2]} ({published} events)")
