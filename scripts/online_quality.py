"""Replay a generated log through a real worker and judge what it published (online quality).

    .venv/bin/python scripts/online_quality.py [--users 20000] [--days 60] [--seed 3]

Starts an embedded broker and one ``shopscore worker``, replays the log at full speed, waits
until every event is consumed and the worker has gone quiet, dumps ``scores.churn``,
``scores.interest`` and ``recs.cart`` and judges every published message against the log's
future (``offline_train.judge``). Prints one JSON object: the judged figures, the worker's own
rolling online metrics, and the replay's throughput as the worker saw it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from offline_train.judge import LogTruth, judge
from offline_train.online_eval import clean_log
from stream.settings import Settings
from stream.tools.broker import EmbeddedBroker, free_port
from stream.tools.dump import dump_topic
from stream.tools.embedded import WorkerProcess, read_worker_metrics
from stream.tools.generator import GeneratorConfig, write_log
from stream.tools.replay import publish, read_log


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=60)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop waiting after this long and judge what was published so far (every score "
        "is still judged against the whole log's future; the report says how much was read)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shopscore-quality-"))
    log = work / "log.jsonl"
    _progress(f"generating {args.users} users x {args.days} days into {log}")
    write_log(GeneratorConfig(users=args.users, days=args.days, seed=args.seed), log)
    broker = EmbeddedBroker(log_path=work / "broker.log").start()
    settings = Settings(
        broker=broker.url, web_port=free_port(), data_dir=work / "data", app_id="quality"
    )
    worker = WorkerProcess(settings, log_path=work / "worker.log").start()
    try:
        worker.wait_ready(timeout=120)
        events = read_log(log)
        _progress(f"replaying {len(events):,} events")
        summary = asyncio.run(publish(settings, events))
        del events  # ~4 KB per event: free it before the outputs are dumped and judged
        started = time.monotonic()
        first = None
        last_produced, quiet_since = -1.0, time.monotonic()
        deadline = started + 60 * args.max_minutes if args.max_minutes else float("inf")
        while True:
            try:
                counts = read_worker_metrics(settings_url(settings), timeout=30)
            except OSError as exc:  # a worker busy for a moment: ask again
                if worker.proc is None or worker.proc.poll() is not None:
                    raise SystemExit(
                        f"the worker exited (see {work / 'worker.log'}); the broker and its "
                        "topics are gone with this script"
                    ) from exc
                _progress(f"  /metrics did not answer ({exc}); asking again")
                time.sleep(2)
                continue
            if time.monotonic() > deadline:
                _progress(f"  stopping after {args.max_minutes} minutes, as asked")
                quiet_since = time.monotonic()
                break
            if first is None and counts.consumed > 0:
                first = time.monotonic()
            if counts.produced != last_produced:
                last_produced, quiet_since = counts.produced, time.monotonic()
            if counts.consumed >= summary.published and time.monotonic() - quiet_since > 5:
                break
            _progress(f"  consumed {int(counts.consumed):,} produced {int(counts.produced):,}")
            time.sleep(2)
        busy_s = quiet_since - (first or started)
        metrics = _online_metrics(settings)
        _progress("dumping the output topics")
        outputs = {
            topic: [r["value"] for r in asyncio.run(dump_topic(settings, topic))]
            for topic in ("scores.churn", "scores.interest", "recs.cart")
        }
        report = judge(LogTruth(clean_log(log)), outputs)
        report["worker"] = {
            "events": summary.published,
            "events_consumed": int(counts.consumed),
            "events_per_s_consumed": round(summary.published / busy_s, 1) if busy_s else None,
            "messages_published": {k: len(v) for k, v in outputs.items()},
            "online_metrics": metrics,
        }
        report["log"] = {"users": args.users, "days": args.days, "seed": args.seed}
        print(json.dumps(report, indent=2))
    finally:
        worker.stop()
        broker.stop()


def settings_url(settings: Settings) -> str:
    return f"http://{settings.web_host}:{settings.web_port}"


def _online_metrics(settings: Settings) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{settings_url(settings)}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "shopscore_online_metric":
                out[f"{sample.labels['model']}.{sample.labels['metric']}"] = round(sample.value, 4)
    return out


if __name__ == "__main__":
    main()
