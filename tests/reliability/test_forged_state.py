"""A forged learners checkpoint never runs code in a worker, against the real broker.

The issue's probe: a record in the ``learners`` changelog in the chunked format (``P#<gen>#0`` =
zlib(pickle), then ``P`` = ``SSCHUNK1 <gen> 1``) whose pickle ``__reduce__``s to ``os.system``
ran as the worker's user at the next restart, when the partition's learners were loaded. Now
the checkpoint is refused: counted in ``shopscore_state_records_rejected_total{table="learners"}``,
logged with its key, the partition's learners start afresh, the worker stays up and scores, and
its next checkpoint writes over the forgery.
"""

from __future__ import annotations

import os
import pickle
import time
import urllib.request
import zlib

import orjson
import pytest
from aiokafka.partitioner import murmur2

pytestmark = [pytest.mark.broker, pytest.mark.both_brokers]

NOW = int(time.time() * 1000)


class _RunsCommand:
    """Pickles as ``os.system(command)``: what an attacker writes to the changelog."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


def _users_of(partition: int, partitions: int, n: int) -> list[str]:
    """User ids Kafka's default partitioner (murmur2, as ``ShopscoreApp._owns``) puts there."""
    out, i = [], 0
    while len(out) < n:
        user = f"forged-u{i}"
        if (murmur2(user.encode()) & 0x7FFFFFFF) % partitions == partition:
            out.append(user)
        i += 1
    return out


def _learners_rejected(url: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith('shopscore_state_records_rejected_total{table="learners"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _scored(url: str, user: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/users/{user}", timeout=5) as resp:
            return bool(orjson.loads(resp.read()).get("scores"))
    except urllib.error.HTTPError:
        return False


def _clicks(users: list[str], tag: str) -> list[tuple[str, bytes, bytes]]:
    return [
        (
            "clicks",
            user.encode(),
            orjson.dumps(
                {"event_id": f"{tag}-{user}", "user_id": user, "ts": NOW - 60_000, "item_id": "i1"}
            ),
        )
        for user in users
    ]


def test_a_forged_learners_checkpoint_never_runs_code(
    settings, start_worker, produce, wait, tmp_path, send_raw
) -> None:
    marker = tmp_path / "pwned"
    # A first worker creates the topics (the changelogs with their partitions), then stops.
    start_worker(settings, name="first").stop()

    changelog = f"{settings.app_id}-learners-changelog"
    # The bare pickle the reader took before (what the probe wrote), on partition 0 as
    # chunk then header, and the same under a later generation on partition 1.
    payload = pickle.dumps(_RunsCommand(f"touch {marker}"))
    send_raw(
        settings,
        [
            (changelog, 0, b"0#1#0", zlib.compress(payload)),
            (changelog, 0, b"0", b"SSCHUNK1 1 1"),
            (changelog, 1, b"1#7#0", zlib.compress(payload)),
            (changelog, 1, b"1", b"SSCHUNK1 7 1"),
        ],
    )
    pickle.loads(payload)  # the payload is live: a plain unpickler runs it
    assert marker.exists()
    marker.unlink()

    second = start_worker(settings, name="second")
    users = [*_users_of(0, settings.partitions, 3), *_users_of(1, settings.partitions, 3)]
    produce(settings, _clicks(users, "a"))  # scoring them loads partitions 0 and 1's learners
    wait(lambda: marker.exists() or all(_scored(second.url, user) for user in users), 90)
    assert not marker.exists(), "the forged checkpoint ran its command in the worker"
    wait(lambda: _learners_rejected(second.url) >= 2, 30)
    assert second.proc is not None and second.proc.poll() is None  # still up
    health = second.health()
    assert health is not None and health.get("status") == "ready", health
    assert _learners_rejected(second.url) == 2  # each refused once, then fresh learners
    log = (tmp_path / "second.log").read_text(errors="replace")
    assert "refusing the learners checkpoint of partition 0 (key b'0')" in log
    assert "refusing the learners checkpoint of partition 1 (key b'1')" in log
    second.stop()

    # The checkpoints the second worker wrote replaced the forgeries: a restart reads them.
    third = start_worker(settings, name="third")
    produce(settings, _clicks(users, "b"))
    wait(lambda: all(_scored(third.url, user) for user in users), 90)
    assert _learners_rejected(third.url) == 0
    assert not marker.exists()
