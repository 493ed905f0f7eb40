"""How a running ``shopscore run`` tells the other commands where its broker is.

The embedded broker listens on a free port chosen at start. While ``run`` is up it keeps
``<data dir>/run.json`` (broker URL, worker URL, its pid); ``replay`` and ``dump`` started from
the same directory without a configured broker use that broker, and say so on stderr. A file
left by a ``run`` that died is ignored (its pid is gone).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson

from stream.settings import Settings

__all__ = ["forget_running", "note_running", "running_run"]


def _path(settings: Settings) -> Path:
    return Path(settings.data_dir) / "run.json"


def note_running(settings: Settings, worker_url: str) -> None:
    """Record this process's broker and worker (``settings.broker`` is the embedded one)."""
    record = {"broker": settings.broker, "worker": worker_url, "pid": os.getpid()}
    path = _path(settings)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(record))
    tmp.replace(path)


def forget_running(settings: Settings) -> None:
    """Remove the record if this process wrote it."""
    found = _read(_path(settings))
    if found is not None and found.get("pid") == os.getpid():
        with contextlib.suppress(OSError):
            _path(settings).unlink()


def running_run(settings: Settings) -> dict[str, Any] | None:
    """The record of a ``run`` still alive in ``settings.data_dir``, or None."""
    found = _read(_path(settings))
    if found is None or not isinstance(found.get("broker"), str):
        return None
    pid = found.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return found


def _read(path: Path) -> dict[str, Any] | None:
    try:
        found = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return found if isinstance(found, dict) else None
