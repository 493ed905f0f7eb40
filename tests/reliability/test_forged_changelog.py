"""Forged changelog records never wedge a restart: each is skipped, counted and logged.

Anyone who can produce to the broker can write to a changelog (``GET /router/`` used to list
their names). Before the guard, one record ``[2, "x"]`` under key ``forged`` in the users
changelog left ``/health`` at 503 ``tables_recovered: false`` forever, on every restart.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.request

import orjson
import pytest

from stream.features import UserState, encode_state

pytestmark = [pytest.mark.broker, pytest.mark.both_brokers]

NOW = int(time.time() * 1000)
YEAR_2100 = 4_102_444_800_000


def _changelog(settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"


def _rejected(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("shopscore_state_records_rejected_total{"):
            table = line.split('table="', 1)[1].split('"', 1)[0]
            out[table] = float(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_forged_changelog_records_are_skipped_and_recovery_completes(
    settings, start_worker, produce, wait, tmp_path, store, send_raw, helpers
) -> None:
    settings = dataclasses.replace(settings, store=store)
    _user = helpers.user_view
    first = start_worker(settings, name="first")
    click = {"event_id": "e1", "user_id": "u1", "ts": NOW - 60_000, "item_id": "i1"}
    produce(settings, [("clicks", b"u1", orjson.dumps(click))])
    wait(lambda: _user(first.url, "u1"), 60)
    first.stop()

    forged_state = encode_state(UserState("someone-else"))
    records = [
        # Structurally wrong values: the case, and plain garbage.
        (_changelog(settings, "users"), 0, b"forged", orjson.dumps([2, "x"])),
        (_changelog(settings, "users"), 1, b"forged2", b"\xff\x00not json"),
        # A valid state stored under another user's key.
        (_changelog(settings, "users"), 2, b"u1-impostor", forged_state),
        # A key that is not UTF-8 (the worker decodes keys when it lists a partition's users).
        (_changelog(settings, "users"), 3, b"\xff\xfe", forged_state),
        (_changelog(settings, "scores"), 0, b"u1", b"[1, {}, 5]"),
        # Clock: garbage, a far-future time, and a key of no partition of ours.
        (_changelog(settings, "clock"), 0, b"0", b"\"soon\""),
        (_changelog(settings, "clock"), 1, b"1", b"%d" % YEAR_2100),
        (_changelog(settings, "clock"), 2, b"99", b"%d" % NOW),
        # Learners: a key of another partition, and a key that is not a learners key.
        (_changelog(settings, "learners"), 0, b"3", b"x"),
        (_changelog(settings, "learners"), 1, b"../../etc", b"x"),
    ]
    send_raw(settings, records)

    second = start_worker(settings, name="second")  # fails the test unless ready in 90 s
    health = second.health()
    assert health is not None and health["tables_recovered"] is True
    # A record in the current (compressed) format is kept as bytes at recovery and decoded
    # when its user is first touched: the impostor is refused then, not before.
    rejected = _rejected(second.url)
    assert rejected == {"users": 3, "scores": 1, "clock": 3, "learners": 2}, rejected
    # The real user's state survived the forgeries; the forged keys are unknown.
    view = _user(second.url, "u1")
    assert view is not None and view["features"]["clicks_total"] == 1
    assert _user(second.url, "forged") is None and _user(second.url, "u1-impostor") is None
    rejected = _rejected(second.url)
    assert rejected == {"users": 4, "scores": 1, "clock": 3, "learners": 2}, rejected
    # The far-future clock did not move anyone's view of time.
    assert view["event_time"] < NOW + 86_400_000
    log = (tmp_path / "second.log").read_text(errors="replace")
    assert "b'forged'" in log and "Error in recovery" not in log

    # The worker still works: a new event is applied.
    click2 = {**click, "event_id": "e2", "ts": NOW - 30_000}
    produce(settings, [("clicks", b"u1", orjson.dumps(click2))])
    wait(lambda: (_user(second.url, "u1") or {}).get("features", {}).get("clicks_total") == 2, 60)
