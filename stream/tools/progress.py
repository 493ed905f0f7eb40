"""A one-line live status on a terminal; silent when output is not a terminal (CI, pipes)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["StatusLine"]


class StatusLine:
    """Rewrites one line of ``stream`` at most ``hz`` times a second."""

    def __init__(self, stream: TextIO | None = None, *, hz: float = 5.0, force: bool = False):
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self._interval = 1.0 / hz
        self._last = 0.0
        self._width = 0

    def update(self, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
