"""Train the zstd dictionaries that compress per-user changelog records (``stream.packing``).

    .venv/bin/python scripts/train_state_dictionaries.py [--users 4000] [--days 30] [--only scores]

Replays generated traffic (two seeds the benchmark does not use) through the worker's pipeline
in-process, with the shipped models, and trains one dictionary on the users' feature states
(``stream.features.codec.state_json``) and one on their scoring states
(``UserScores.to_json``), with the fixed dictionary ids ``stream.packing`` knows them by.

A retrained dictionary must get a new id and a new file (and ``stream.packing.DICTIONARIES``
an entry): records written with the old one name it, and must keep reading.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from pathlib import Path

import zstandard

from stream import packing
from stream.contract.events import TOPIC_OF_KIND
from stream.contract.partitioning import owner_partition
from stream.features.codec import state_json
from stream.models.registry import load_models
from stream.pipeline import InputRecord, Pipeline, PipelineConfig, Stores
from stream.tools.generator import GeneratorConfig, generate_events
from stream.tools.replay import iter_generated

#: Bytes per dictionary: zstd's own default; 64 KiB compressed these records no better.
DICTIONARY_BYTES = 16_384
PARTITIONS = 4


def replayed(users: int, days: float, seed: int) -> Stores:
    """Every table after the pipeline has applied a generated log, in batches of 500."""
    events, _truth = generate_events(GeneratorConfig(users=users, days=days, seed=seed))
    logged = list(iter_generated(events))
    offsets: dict[tuple[str, int], int] = {}
    records = []
    for event in logged:
        topic = TOPIC_OF_KIND[event.kind]
        partition = owner_partition(event.key.decode(), PARTITIONS)
        offset = offsets.get((topic, partition), 0)
        offsets[topic, partition] = offset + 1
        records.append(
            InputRecord(topic, partition, offset, event.key, event.payload, event.ts / 1000)
        )
    stores = Stores.in_memory()
    end = logged[-1].ts / 1000 + 1
    pipeline = Pipeline(
        PipelineConfig(partitions=PARTITIONS, align_max_hold_s=5.0),
        load_models(),
        stores,
        wall=lambda: end,
    )

    async def run() -> None:
        for i in range(0, len(records), 500):
            out = await pipeline.process(records[i : i + 500])
            stores.apply(out.writes)

    asyncio.run(run())
    return stores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=4_000)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--out", type=Path, default=Path("stream/dictionaries"))
    parser.add_argument(
        "--only",
        choices=("users", "scores"),
        help="train one dictionary (the other's id still names the shipped file: rewriting it "
        "under the same id would make its old records unreadable)",
    )
    args = parser.parse_args()
    users: list[bytes] = []
    scores: list[bytes] = []
    for seed in (101, 102):
        stores = replayed(args.users // 2, args.days, seed)
        users += [state_json(s) for s in stores.users.values()]
        scores += [s.to_json() for s in stores.scores.values()]
    random.Random(7).shuffle(users)
    random.Random(7).shuffle(scores)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, dict_id, samples in (
        ("users", packing.USERS_DICTIONARY, users),
        ("scores", packing.SCORES_DICTIONARY, scores),
    ):
        if args.only not in (None, name):
            continue
        trained = zstandard.train_dictionary(DICTIONARY_BYTES, samples, dict_id=dict_id)
        path = args.out / packing.DICTIONARIES[dict_id]
        path.write_bytes(trained.as_bytes())
        print(f"{path}: {len(samples)} records, dictionary id {dict_id}")


if __name__ == "__main__":
    main()
