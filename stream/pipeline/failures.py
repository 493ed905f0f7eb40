"""Users whose scoring failed, logged without flooding the log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stream.scoring.engine import ScoreFailure

__all__ = ["FailureLog"]


class FailureLog:
    """Logs users whose scoring failed without flooding: one line per batch with failures,
    naming a few users (stage and exception), at most one line per ``every_s`` (the batches in
    between are summed up in the next line) and a traceback at most once per
    ``traceback_every_s``. A poisoned user in every batch is a steady trickle, not a flood;
    ``shopscore_scoring_errors_total`` counts every one of them."""

    NAMED = 3

    def __init__(
        self,
        logger: logging.Logger,
        *,
        every_s: float = 10.0,
        traceback_every_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self.traceback_every_s = traceback_every_s
        self._clock = clock
        self._last_line: float | None = None
        self._last_traceback: float | None = None
        self._held_users = 0
        self._held_batches = 0

    def report(self, failures: list[ScoreFailure], batch_size: int) -> None:
        now = self._clock()
        if self._last_line is not None and now - self._last_line < self.every_s:
            self._held_users += len(failures)
            self._held_batches += 1
            return
        named = "; ".join(
            f"{f.user_id[:80]!r} at {f.stage}: {type(f.error).__name__}: {str(f.error)[:200]!r}"
            for f in failures[: self.NAMED]
        )
        more = f" and {len(failures) - self.NAMED} more" if len(failures) > self.NAMED else ""
        held = (
            f" ({self._held_users} more users in {self._held_batches} batches since the last "
            "report)"
            if self._held_batches
            else ""
        )
        trace = self._last_traceback is None or now - self._last_traceback >= self.traceback_every_s
        self.logger.error(
            "scoring failed for %d of %d users of a batch; they get no scores from it, the "
            "others were scored: %s%s%s",
            len(failures),
            batch_size,
            named,
            more,
            held,
            exc_info=failures[0].error if trace else None,
        )
        self._last_line = now
        if trace:
            self._last_traceback = now
        self._held_users = self._held_batches = 0
