"""A one-line live status on a terminal, and a plain line now and then anywhere else.

On a terminal the line is rewritten in place a few times a second. When the output is a pipe or
a file (CI, ``| tee``, a service log), carriage returns would garble it and silence would look
like a hang, so a full line is written every ``every_s`` seconds instead (none for commands that
finish sooner).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["StatusLine"]


class StatusLine:
    """Rewrites one line of ``stream`` at most ``hz`` times a second (a terminal), or appends
    one every ``every_s`` seconds (anything else)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        hz: float = 5.0,
        every_s: float = 10.0,
        force: bool = False,
    ) -> None:
        self.stream = stream or sys.stderr
        self.live = force or self.stream.isatty()
        self._interval = 1.0 / hz if self.live else every_s
        self._last = 0.0 if self.live else time.monotonic()
        self._width = 0

    def update(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        if not self.live:
            if force:
                return  # a final figure: the caller's summary says it
            self._last = now
            self.stream.write(text.strip() + "\n")
            self.stream.flush()
            return
        self._last = now
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        if self.live and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
