"""The demo's traffic: recent history first, then live laps of the same users without end."""

from __future__ import annotations

import io
import itertools
import os
from collections import Counter

from stream.settings import Settings
from stream.tools.demo import DAY_MS, DemoOptions, demo_events
from stream.tools.progress import StatusLine
from stream.tools.running import forget_running, note_running, running_run

NOW = 1_790_000_000_000  # a fixed "now" (epoch ms)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        self.now += 7  # every event taken 7 ms after the one before
        return self.now


def test_history_then_live_laps_in_event_time_order() -> None:
    demo = DemoOptions(users=5, days=2, seed=3, bad_fraction=0.05, duplicate_fraction=0.05)
    events = list(itertools.islice(demo_events(demo, clock=Clock()), 2000))
    assert len(events) == 2000
    seen: set[object] = set()
    firsts = [e for e in events if not (e.get("event_id") in seen or seen.add(e.get("event_id")))]
    valid_ts = [e["ts"] for e in firsts if isinstance(e.get("ts"), int) and e["ts"] < NOW + DAY_MS]
    history = [ts for ts in valid_ts if ts < NOW]
    live = [ts for ts in valid_ts if ts >= NOW]
    assert history and live, "both the compressed history and live laps"
    assert min(history) >= (NOW // DAY_MS) * DAY_MS - 2 * DAY_MS
    assert live == sorted(live) and valid_ts.index(live[0]) == len(history)
    # Same population in every lap; ids never repeat across laps except planted duplicates.
    in_range = [e for e in events if isinstance(e.get("ts"), int) and e["ts"] < NOW + DAY_MS]
    users = {e.get("user_id") for e in in_range if isinstance(e.get("user_id"), str)}
    assert users <= {f"u{i:06d}" for i in range(5)} | {""}
    ids = Counter(e.get("event_id") for e in events if isinstance(e.get("event_id"), str))
    repeated = sum(n - 1 for n in ids.values() if n > 1)
    assert repeated <= 0.1 * len(events)
    assert any(str(e.get("event_id", "")).endswith(".1") for e in events)
    # A planted duplicate is the same event again: same id, same time, in every lap.
    first_ts: dict[str, object] = {}
    for e in events:
        if isinstance(e.get("event_id"), str) and e["event_id"] and isinstance(e.get("ts"), int):
            assert first_ts.setdefault(e["event_id"], e["ts"]) == e["ts"], e
    # Dirt keeps its timestamps: a "ten years ahead" event stays ahead in live laps too.
    assert any(isinstance(e.get("ts"), int) and e["ts"] > NOW + 300 * DAY_MS for e in events)


def test_max_events_ends_the_stream() -> None:
    demo = DemoOptions(users=3, days=1, max_events=50)
    assert len(list(demo_events(demo, clock=Clock()))) == 50


def test_status_line_off_a_terminal_writes_a_plain_line_now_and_then() -> None:
    out = io.StringIO()
    status = StatusLine(out, every_s=0.0)
    status.update("  1.0s  sent 10")
    status.update("  2.0s  sent 20")
    status.update("final", force=True)
    status.close()
    assert out.getvalue() == "1.0s  sent 10\n2.0s  sent 20\n"
    quiet = io.StringIO()
    slow = StatusLine(quiet, every_s=60.0)
    slow.update("too soon")
    slow.close()
    assert quiet.getvalue() == ""


def test_status_line_on_a_terminal_rewrites_one_line() -> None:
    out = io.StringIO()
    status = StatusLine(out, hz=1e9, force=True)
    status.update("abc")
    status.update("x")
    status.close()
    assert out.getvalue() == "\rabc\rx  \n"


def test_a_running_run_is_found_and_a_dead_one_is_not(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, broker="kafka://127.0.0.1:4242")
    assert running_run(settings) is None
    note_running(settings, "http://127.0.0.1:6066")
    found = running_run(settings)
    assert found is not None and found["broker"] == "kafka://127.0.0.1:4242"
    forget_running(settings)
    assert running_run(settings) is None
    (tmp_path / "run.json").write_text('{"broker": "kafka://x:1", "pid": 999999999}')
    assert running_run(settings) is None  # its process is gone
    (tmp_path / "run.json").write_text("garbage")
    assert running_run(settings) is None
    assert os.path.exists(tmp_path / "run.json")
