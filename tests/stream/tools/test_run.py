"""``shopscore run``: the embedded default, end to end, as a user starts it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from stream.tools.broker import free_port


def run_cmd(*args: str, env: dict[str, str] | None = None, cwd=None, timeout: float = 240):
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        env={**os.environ, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_max_events_exits_zero_with_every_event_accounted_for(tmp_path) -> None:
    result = run_cmd(
        "--web-port",
        str(free_port()),
        "--data-dir",
        str(tmp_path / "d"),
        "run",
        "--max-events",
        "3000",
        "--rate",
        "0",
        "--users",
        "20",  # ~1,300 events a lap: the run goes on into live laps
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "embedded broker" in result.stdout
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["events_sent"] == 3000
    assert summary["events_consumed"] == 3000
    rejected = sum(summary["rejected"].values())
    assert summary["events_applied"] + rejected + summary["duplicates"] == 3000
    out = summary["messages_out_by_topic"]
    assert rejected > 0 and out["events.dlq"] == rejected  # the demo includes bad events
    assert out["scores.churn"] > 0 and out["scores.interest"] > 0  # and valid ones get scored
    assert 0 < summary["users"] <= 20 and summary["interrupted"] is False
    assert summary["startup_to_first_event_s"] is not None
    # Later laps continue the same users in event time: nothing late, no lap taken for a
    # duplicate of an earlier one (only the planted 0.5% duplicates are).
    assert not {"late", "misrouted", "conflicting_duplicate"} & set(summary["rejected"])
    assert summary["duplicates"] <= 0.02 * 3000
    # A normal demo leaves nothing in the worker log that asks for an operator: no warning,
    # no error (busy timers and full producer buffers are counted in metrics instead).
    log = (tmp_path / "d" / "worker.log").read_text()
    loud = [line for line in log.splitlines() if "[WARNING]" in line or "[ERROR]" in line]
    assert not loud, loud[:5]


@pytest.mark.broker
def test_run_uses_a_configured_broker_and_starts_none(settings, tmp_path) -> None:
    env = {k: v for k, v in settings.env().items()}
    result = run_cmd("run", "--max-events", "500", "--rate", "0", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "embedded broker" not in result.stdout
    assert f"broker           {settings.broker}" in result.stdout
    assert json.loads(result.stdout[result.stdout.index("{") :])["events_consumed"] == 500


def test_ctrl_c_stops_everything_cleanly(tmp_path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "--web-port", str(free_port()), "run", "--rate", "200"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "streaming demo events" in line:
            break
    time.sleep(2)
    children = _children(proc.pid)
    assert len(children) >= 2, lines  # broker and worker
    # Another command from the same directory finds the running broker by itself.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHOPSCORE_")}
    dumped = run_cmd("dump", "clicks", cwd=tmp_path, env=clean, timeout=60)
    assert dumped.returncode == 0, dumped.stderr
    assert "using the broker of `shopscore run`" in dumped.stderr
    assert len(dumped.stdout.splitlines()) > 0
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert "interrupted                True" in out
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), f"child {pid} left running"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] == "Z"
    except FileNotFoundError:
        return True
