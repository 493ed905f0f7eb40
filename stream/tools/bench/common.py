"""What every phase shares: its own settings, polling a process's count, time budgets."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from stream.errors import ShopscoreError
from stream.settings import Settings
from stream.tools.broker import free_port

__all__ = [
    "Progress",
    "budget",
    "check_alive",
    "phase_settings",
    "poll_reached",
    "poll_started",
    "rss_mb",
    "stderr_progress",
    "stop_process",
]

Progress = Callable[[str], None]


def stderr_progress(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def phase_settings(base: Settings, tag: str, phase: str, workdir: Path) -> Settings:
    """``base`` with a phase's own app id (consumer group), topic prefix, port and data dir."""
    return dataclasses.replace(
        base,
        app_id=f"{tag}-{phase}",
        topic_prefix=f"{tag}-{phase}.",
        web_port=free_port(),
        data_dir=workdir / phase,
    )


def poll_started(
    count: Callable[[], float],
    proc: subprocess.Popen[bytes] | None,
    what: str,
    timeout: float = 120.0,
) -> float:
    """Wall time (s) at which ``count()`` first turned positive (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_alive(proc, what)
        try:
            if count() > 0:
                return time.time()
        except OSError:
            pass
        time.sleep(0.02)
    raise ShopscoreError(f"{what} consumed nothing within {timeout:.0f}s")


def poll_reached(
    count: Callable[[], float],
    n: int,
    proc: subprocess.Popen[bytes] | None,
    what: str,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    last = 0.0
    while time.monotonic() < deadline:
        check_alive(proc, what)
        with contextlib.suppress(OSError):
            last = count()
        if last >= n:
            return
        time.sleep(0.5)  # the end time comes from Kafka timestamps: poll rarely, cost little
    raise ShopscoreError(f"{what} consumed {last:.0f} of {n} events within {timeout:.0f}s")


def check_alive(proc: subprocess.Popen[bytes] | None, what: str) -> None:
    if proc is not None and proc.poll() is not None:
        raise ShopscoreError(f"{what} exited with code {proc.returncode}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def budget(n: int) -> float:
    """A generous time limit for consuming ``n`` events (a stuck phase fails, never hangs)."""
    return 120.0 + n / 500
