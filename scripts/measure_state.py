"""Measure per-user state size, worker RSS and recovery time for N users (default 100,000).

    .venv/bin/python scripts/measure_state.py [--users 100000] [--sample-users 5000]

Builds real user states by replaying a generated log through the feature core (``sample``
users, 30 days), then writes ``--users`` states (the sample, repeated under new user ids) to a
worker's changelog topic on an embedded broker and starts a worker on it: the time until
``/health`` is ready is the recovery time, and its RSS then is the memory for that population.
Prints one JSON object. Feature state only: ``shopscore bench`` measures the same way with the
worker's scoring state too (``stream/tools/bench/state.py``, which this script reuses).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from stream.settings import Settings
from stream.tools.bench import measure_state, offline_sample
from stream.tools.broker import EmbeddedBroker, free_port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--sample-users", type=int, default=5_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shopscore-state-"))
    sample = offline_sample(args.sample_users, days=30, seed=3)
    sizes = sample.bytes_per_user()
    result: dict[str, object] = {
        "sample_users": len(sample.users),
        "state_bytes_per_user_mean": sizes["features_mean"],
        "state_bytes_per_user_p95": sizes["features_p95"],
    }
    with EmbeddedBroker() as broker:
        settings = Settings(
            broker=broker.url,
            app_id="measure",
            web_port=free_port(),
            data_dir=work / "data",
            log_level="warning",
        )
        measured = measure_state(settings, sample, args.users, work / "worker.log")
    users = args.users
    result.update(
        users=users,
        changelog_fill_s=measured["changelog_fill_s"],
        recovery_s=measured["recovery_s"],
        recovery_s_per_100k_users=round(measured["recovery_s"] / users * 1e5, 1),
        worker_rss_mb=measured["worker_rss_mb"],
        rss_mb_per_100k_users=round(measured["worker_rss_mb"] / users * 1e5, 1),
    )
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
