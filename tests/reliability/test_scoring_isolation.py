"""Issue 10, case 6, against a real worker: one unlucky item no longer drops a batch of scores.

An item is clicked as ``books`` on a partition where nobody added a ``books`` item yet, then
ordered without a category (ordinary traffic: shops often send order lines bare); another is
clicked as ``garden`` and added to a cart as ``music``. Before the fix, either raised
``KeyError`` in the shop popularity, and every user scored in the same batch got no scores at
all, on every batch that held such an item. Now every user of those batches is scored and
nothing is counted in ``shopscore_scoring_errors_total``.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.broker, pytest.mark.both_brokers]

NOW = int(time.time() * 1000) - 600_000


def _partition(user_id: str, partitions: int) -> int:
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


def _users_on(partition: int, partitions: int, prefix: str, n: int) -> list[str]:
    found, k = [], 0
    while len(found) < n:
        user = f"{prefix}{k:04d}"
        if _partition(user, partitions) == partition:
            found.append(user)
        k += 1
    return found


def _msg(topic: str, user: str, ts: int, **fields: Any) -> tuple[str, bytes, bytes, int]:
    body = {"event_id": f"{user}-{topic}-{ts}", "user_id": user, "ts": ts, **fields}
    return (topic, user.encode(), orjson.dumps(body), ts)


def _ordinary(user: str, ts: int, n: int) -> list[tuple[str, bytes, bytes, int]]:
    item = f"toy{n % 7}"
    return [
        _msg("clicks", user, ts, item_id=item, category="toys", price=9.5),
        _msg("carts", user, ts + 100, item_id=item, action="add", category="toys", price=9.5),
        _msg(
            "orders",
            user,
            ts + 200,
            order_id=f"o-{user}",
            items=[{"item_id": item, "price": 9.5, "quantity": 1, "category": "toys"}],
        ),
    ]


def _scoring_errors(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "shopscore_scoring_errors_total"
    )


def test_an_item_moving_category_costs_no_user_of_its_batch_their_scores(
    settings, start_worker, produce, dump, wait
) -> None:
    parts = settings.partitions
    worker = start_worker(settings)
    # The unlucky users and some of their batch-mates share partition 0 (the shop popularity
    # is per partition); the others are spread over every partition.
    ordered_bare, moved, *neighbours = _users_on(0, parts, "p", 6)
    others = [f"u{k:03d}" for k in range(24)]
    messages = []
    for n, user in enumerate([*neighbours, *others]):
        messages += _ordinary(user, NOW + n, n)
    messages += [
        _msg("clicks", ordered_bare, NOW + 1_000, item_id="X", category="books", price=20.0),
        # No category on the line: "unknown", which is not "books" (KeyError before the fix).
        _msg(
            "orders",
            ordered_bare,
            NOW + 2_000,
            order_id="o-x",
            items=[{"item_id": "X", "price": 20.0, "quantity": 1}],
        ),
        _msg("clicks", moved, NOW + 1_000, item_id="Z", category="garden", price=5.0),
        _msg("clicks", moved, NOW + 1_100, item_id="toy1", category="toys", price=9.5),
        _msg("carts", moved, NOW + 2_000, item_id="Z", action="add", category="music", price=5.0),
    ]
    produce(settings, sorted(messages, key=lambda m: m[3]))
    first_wave = {ordered_bare, moved, *neighbours, *others}

    def scored(expected: set[str]) -> set[str]:
        latest = {r["key"] for r in dump(settings, "scores.churn", latest_per_key=True)}
        return expected - latest

    missing: set[str] = set()

    def all_scored(expected: set[str]) -> bool:
        missing.clear()
        missing.update(scored(expected))
        return not missing

    try:
        wait(lambda: all_scored(first_wave), 60, 1.0)
    except AssertionError:
        pytest.fail(f"{len(missing)} of {len(first_wave)} users got no scores: {sorted(missing)}")
    for topic in ("scores.interest", "scores.purchase_power"):
        assert {r["key"] for r in dump(settings, topic, latest_per_key=True)} >= first_wave, topic
    recs = {r["key"]: r["value"] for r in dump(settings, "recs.cart", latest_per_key=True)}
    assert moved in recs  # the moved item's cart got recommendations

    # The same items again, in later batches: still every user scored.
    later = NOW + 60_000
    second = _users_on(0, parts, "q", 3) + [f"v{k:03d}" for k in range(6)]
    messages = []
    for n, user in enumerate(second):
        messages += _ordinary(user, later + n, n)
    messages.append(
        _msg(
            "orders",
            second[0],
            later + 5_000,
            order_id="o-x2",
            items=[
                {"item_id": "X", "price": 20.0, "quantity": 2},
                {"item_id": "Z", "price": 5.0, "quantity": 1},
            ],
        )
    )
    produce(settings, sorted(messages, key=lambda m: m[3]))
    try:
        wait(lambda: all_scored(set(second)), 60, 1.0)
    except AssertionError:
        pytest.fail(f"{len(missing)} of {len(second)} users got no scores: {sorted(missing)}")
    assert _scoring_errors(worker.url) == 0  # fixed, not merely isolated
