"""Whether the broker answers, made visible (``/health``, ``shopscore_broker_up``) and bounded.

Three parts, each small:

* **The probe.** Every second a Metadata request (no topics: the cheapest request a broker
  serves after authentication) goes to the broker on a connection of its own, with a timeout
  shorter than ``SHOPSCORE_BROKER_TIMEOUT``. A closed port, a refused connection and a frozen
  broker (connections open, nothing answers) all read the same: no answer. Once the broker has
  not answered for ``broker_timeout_ms``, ``/health`` says ``broker_up: false`` (503, the worker
  is not ready), ``shopscore_broker_up`` is 0 and one WARNING is logged every 10 s; one INFO
  says when it answers again. The probe never waits longer than its timeout, keeps at most one
  connection (closed on any failure, and when the app stops), and runs on the app's event loop
  without blocking it (name resolution goes through the loop's executor).
* **The watchdog** (``StallClock``). A worker that stays not ready while the broker answers is
  wedged (seen: a broker restarted empty left Faust's table recovery waiting for changelog
  records forever). After ``stall_timeout_ms`` of that, one ERROR line says why and the process
  exits with :data:`STALL_EXIT_CODE` so its supervisor restarts it (``stream.worker.run`` arms the
  exit, with a hard exit if Faust's shutdown hangs). What counts: only time the broker answers;
  not the time of an idle spare (a worker in a stable group that was given no partitions); and
  while tables recover, only time without progress (the changelog offsets read stop growing),
  so a long recovery that advances is never cut short.
* **Bounded logging** (``RateLimitFilter``). aiokafka and Faust log every failed connection
  attempt, fetch and produce retry (thousands of lines a minute while the broker is gone). The
  worker's log handlers get a filter that passes the first record of each (logger, level,
  message template) and then at most one per 10 s, carrying the count of the lines it held back.

The watch runs as a ``mode`` service started first with the Faust app (timers registered with
``app.timer`` only start after the first table recovery, which is exactly what may hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

import mode
from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.protocol.metadata import MetadataRequest

if TYPE_CHECKING:
    from stream.worker.app import ShopscoreApp

__all__ = [
    "STALL_EXIT_CODE",
    "BrokerWatch",
    "RateLimitFilter",
    "StallClock",
    "install",
    "probe_timeout_s",
]

log = logging.getLogger("shopscore.broker")

#: Exit status of a worker that stopped itself because it stayed not ready while the broker
#: answered (1 is a runtime error, 2 a configuration error: see ``stream.tools.cli``).
STALL_EXIT_CODE = 3

#: How often the broker is asked, and the watchdog looks at readiness.
PROBE_INTERVAL_S = 1.0

#: While the broker is down, one warning per this many seconds.
WARN_EVERY_S = 10.0

#: The longest a single readiness gap may count toward the stall (a suspended host or an event
#: loop blocked for minutes is not evidence that the worker is wedged).
MAX_STEP_S = 5.0


def probe_timeout_s(broker_timeout_ms: int) -> float:
    """How long one probe may wait: shorter than the broker timeout, so a frozen broker is
    reported down on time, and at most 2 s.

    >>> probe_timeout_s(5_000), probe_timeout_s(1_000), probe_timeout_s(100)
    (2.0, 0.5, 0.2)
    """
    return min(2.0, max(0.2, broker_timeout_ms / 2000))


# -- bounded logging ------------------------------------------------------------------------


class RateLimitFilter(logging.Filter):
    """Pass the first record of each kind, then at most one per ``interval_s``.

    A record's kind is its logger, level and message template (``record.msg`` before ``%``
    formatting: aiokafka's "Unable connect to node with id %s: %s" is one kind whatever the
    node and error), numbers in it counted as equal (Faust formats some messages itself:
    "producer buffer full size 114"). Loggers under ``own_prefixes`` (shopscore's, whose lines name a partition
    or an offset and are rate-limited where they are logged) are keyed by the formatted line
    instead, so only exact repeats are held back. The first record passed after some were held
    back says how many: ``... [12 similar lines suppressed in the last 10 s]``. Records below
    ``min_level`` (DEBUG) always pass: who asks for debug output wants all of it.

    Pure apart from the clock (injectable); safe to share between threads and handlers: the
    decision is taken once per record and remembered on it.
    """

    _MARK = "_shopscore_rate_limit"

    def __init__(
        self,
        interval_s: float = 10.0,
        *,
        min_level: int = logging.INFO,
        own_prefixes: tuple[str, ...] = ("shopscore", "stream"),
        max_kinds: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.min_level = min_level
        self.own_prefixes = own_prefixes
        self.max_kinds = max_kinds
        self.clock = clock
        #: kind -> [monotonic time of the last record passed, records held back since]
        self._kinds: dict[Hashable, list[float]] = {}
        self._lock = threading.Lock()

    def _kind(self, record: logging.LogRecord) -> Hashable:
        name = record.name
        own = any(name == p or name.startswith(p + ".") for p in self.own_prefixes)
        if own:
            return (name, record.levelno, "=", _message(record))
        template = record.msg if isinstance(record.msg, str) else _message(record)
        # Some libraries format before logging (Faust: f"producer buffer full size {n}"): the
        # numbers in a template are what varies between repeats.
        return (name, record.levelno, _NUMBER.sub("#", template))

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, self._MARK, None)
        if decided is not None:
            return bool(decided)
        if record.levelno < self.min_level:
            return True
        kind = self._kind(record)
        now = self.clock()
        with self._lock:
            state = self._kinds.get(kind)
            if state is None:
                if len(self._kinds) >= self.max_kinds:
                    self._prune(now)
                self._kinds[kind] = [now, 0]
                passed = True
            elif now - state[0] >= self.interval_s:
                held, since = int(state[1]), now - state[0]
                state[0], state[1] = now, 0
                if held:
                    _annotate(
                        record, f" [{held} similar lines suppressed in the last {since:.0f} s]"
                    )
                passed = True
            else:
                state[1] += 1
                passed = False
        setattr(record, self._MARK, passed)
        return passed

    def _prune(self, now: float) -> None:
        """Forget kinds quiet for a whole interval (their next record passes anyway); if every
        kind is recent, forget them all rather than grow without bound."""
        quiet = [k for k, (at, _) in self._kinds.items() if now - at >= self.interval_s]
        for kind in quiet:
            del self._kinds[kind]
        if len(self._kinds) >= self.max_kinds:
            self._kinds.clear()


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a malformed record: the handler reports it
        return repr(record.msg)


def _annotate(record: logging.LogRecord, suffix: str) -> None:
    # The suffix holds no '%', so %-formatting with the record's args is unaffected.
    if isinstance(record.msg, str):
        record.msg = record.msg + suffix
    else:
        record.msg = f"{record.getMessage()}{suffix}"
        record.args = None


def install_log_limit(handlers: list[logging.Handler], interval_s: float = 10.0) -> RateLimitFilter:
    """Add one shared :class:`RateLimitFilter` to ``handlers`` (the root logger's)."""
    limiter = RateLimitFilter(interval_s)
    for handler in handlers:
        if not any(isinstance(f, RateLimitFilter) for f in handler.filters):
            handler.addFilter(limiter)
    return limiter


# -- the watchdog ---------------------------------------------------------------------------


class StallClock:
    """How long the worker has been not ready for no good reason (pure; times in seconds).

    ``observe`` is called every second with what the worker looks like. Time adds up while the
    worker is not ready, the broker answers, it is not an idle spare, and recovery makes no
    progress (``progress``: a number that grows while tables recover, e.g. the changelog
    offsets read so far; ``None`` when unknown). Ready, an idle spare, or progress beyond the
    best seen reset it to 0; a broker that does not answer pauses it (restarting the worker
    would not bring the broker back). ``timeout_s`` 0 never expires.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.stalled_s = 0.0
        self._last: float | None = None
        self._best: float | None = None

    def observe(
        self,
        now: float,
        *,
        ready: bool,
        broker_up: bool,
        idle: bool = False,
        progress: float | None = None,
    ) -> bool:
        """Account for the time since the last call; True once the stall has expired."""
        step = 0.0 if self._last is None else min(MAX_STEP_S, max(0.0, now - self._last))
        self._last = now
        if ready or idle:
            self.stalled_s = 0.0
            self._best = None
            return False
        if progress is not None and (self._best is None or progress > self._best):
            first = self._best is None
            self._best = progress
            if not first:  # it moved: recovery is getting somewhere
                self.stalled_s = 0.0
                return False
        if broker_up:
            self.stalled_s += step
        return self.expired

    @property
    def expired(self) -> bool:
        return self.timeout_s > 0 and self.stalled_s >= self.timeout_s


def _recovery_progress(worker: ShopscoreApp) -> float | None:
    """The changelog offsets table recovery has read (grows while it makes progress)."""
    try:
        recovery = worker.app.tables.recovery
        return float(sum(recovery.active_offsets.values()) + sum(recovery.standby_offsets.values()))
    except Exception:  # tables not set up yet
        return None


def _is_idle_spare(detail: Mapping[str, Any]) -> bool:
    """A member of a settled group that holds no partitions (more workers than partitions):
    not ready, but restarting it would only make the whole group rebalance again."""
    return (
        detail.get("assigned_partitions") == 0
        and not detail.get("rebalancing")
        and bool(detail.get("tables_recovered"))
    )


# -- the probe ------------------------------------------------------------------------------


def _servers(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return out


class BrokerWatch:
    """The broker's health as this worker sees it, and the watchdog (module docstring)."""

    def __init__(
        self, worker: ShopscoreApp, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.worker = worker
        settings = worker.settings
        self.clock = clock
        self.timeout_s = settings.broker_timeout_ms / 1000
        self.probe_timeout_s = probe_timeout_s(settings.broker_timeout_ms)
        self.stall = StallClock(settings.stall_timeout_ms / 1000)
        self._servers = _servers(settings.bootstrap_servers())
        self._options = settings.kafka_client_options()
        self._server = 0
        self._conn: AIOKafkaConnection | None = None
        now = clock()
        self._last_ok = now  # the CLI checked the broker answers before the worker started
        self._failures = 0
        self._last_error = ""
        self._down_since: float | None = None
        self._warned_at = 0.0
        self._stall_reported = False
        #: Called with the exit code when the watchdog gives up (``stream.worker.run`` arms it);
        #: unarmed (a worker run in-process) it only logs.
        self.on_stall: Callable[[int], None] | None = None
        #: The exit code decided by the watchdog, if it fired.
        self.exit_code: int | None = None

    # -- what /health shows -----------------------------------------------------------------

    def silent_s(self, now: float | None = None) -> float:
        """Seconds since the broker last answered a probe."""
        return max(0.0, (self.clock() if now is None else now) - self._last_ok)

    def broker_up(self, now: float | None = None) -> bool:
        """False once the broker has not answered for the broker timeout, and a probe failed
        since (so a stale clock alone, after the loop was busy, never reports it down)."""
        return not (self._failures and self.silent_s(now) >= self.timeout_s)

    def status(self) -> dict[str, Any]:
        """Fields merged into ``GET /health``; ``broker_up`` False makes the worker not ready."""
        now = self.clock()
        return {
            "broker_up": self.broker_up(now),
            "broker_silent_s": round(self.silent_s(now), 1),
            "stalled_s": round(self.stall.stalled_s, 1),
        }

    # -- probing ----------------------------------------------------------------------------

    async def probe_once(self) -> bool:
        """Ask the broker once (bounded by the probe timeout); record and report the result."""
        try:
            await asyncio.wait_for(self._ask(), self.probe_timeout_s)
        except asyncio.CancelledError:
            self.close()
            raise
        except Exception as exc:  # refused, reset, timed out, auth failure...
            self.close()
            self._server = (self._server + 1) % len(self._servers)  # try the next one next
            self._note_failure(exc)
            return False
        self._note_answer()
        return True

    async def _ask(self) -> None:
        conn = self._conn
        if conn is None or not conn.connected():
            self.close()
            host, port = self._servers[self._server]
            conn = await create_conn(
                host,
                port,
                client_id="shopscore-broker-watch",
                request_timeout_ms=int(self.probe_timeout_s * 1000),
                **self._options,
            )
            self._conn = conn
        await conn.send(MetadataRequest([]))

    def close(self) -> None:
        """Close the probe's connection (it is opened again by the next probe)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _note_answer(self) -> None:
        now = self.clock()
        if self._down_since is not None:
            log.info("broker answers again after %.0f s without an answer", now - self._down_since)
            self._down_since = None
        self._last_ok = now
        self._failures = 0
        self._last_error = ""
        self.worker.metrics.broker_up.set(1)

    def _note_failure(self, exc: BaseException) -> None:
        now = self.clock()
        self._failures += 1
        self._last_error = _describe(exc)
        if self.broker_up(now):
            return
        self.worker.metrics.broker_up.set(0)
        if self._down_since is None:
            self._down_since = self._last_ok
            self._warned_at = float("-inf")
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "broker has not answered for %.0f s (%s: %s); /health reports broker_up false "
                "and the worker not ready until it does",
                self.silent_s(now),
                self._servers_text(),
                self._last_error,
            )

    def _servers_text(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self._servers)

    # -- the watchdog -----------------------------------------------------------------------

    def check_stall(self) -> bool:
        """Look at readiness once; when the stall expired, report it (once) and give up."""
        now = self.clock()
        try:
            ready, detail = self.worker.ready()
        except Exception:  # app half started: readiness is not known, count nothing
            return False
        expired = self.stall.observe(
            now,
            ready=ready,
            broker_up=bool(detail.get("broker_up", True)),
            idle=_is_idle_spare(detail),
            progress=_recovery_progress(self.worker),
        )
        if not expired:
            self._stall_reported = self._stall_reported and self.stall.stalled_s > 0
            return False
        if not self._stall_reported:
            self._stall_reported = True
            why = ", ".join(
                f"{k}={detail[k]}"
                for k in ("assigned_partitions", "rebalancing", "tables_recovered")
                if k in detail
            )
            code = STALL_EXIT_CODE
            log.error(
                "worker not ready for %.0f s while the broker answers (%s; no table recovery "
                "progress); %s",
                self.stall.stalled_s,
                why,
                f"exiting with status {code} so its supervisor restarts it"
                if self.on_stall is not None
                else "SHOPSCORE_STALL_TIMEOUT expired (not exiting: run in-process)",
            )
            if self.on_stall is not None:
                self.exit_code = code
                self.on_stall(code)
        return True


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer (timed out)"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


class BrokerWatchService(mode.Service):
    """Runs the probe and the watchdog for as long as the Faust app runs."""

    def __init__(self, watch: BrokerWatch, **kwargs: Any) -> None:
        self.watch = watch
        super().__init__(**kwargs)

    @mode.Service.task
    async def _probe_loop(self) -> None:
        while not self.should_stop:
            started = time.monotonic()
            await self.watch.probe_once()
            await self.sleep(max(0.0, PROBE_INTERVAL_S - (time.monotonic() - started)))

    @mode.Service.task
    async def _watchdog_loop(self) -> None:
        while not self.should_stop:
            await self.sleep(PROBE_INTERVAL_S)
            if self.should_stop or self.watch.worker.app.should_stop:
                break
            if self.watch.check_stall() and self.watch.on_stall is not None:
                break  # the process is on its way out

    async def on_stop(self) -> None:
        self.watch.close()


def install(worker: ShopscoreApp) -> BrokerWatch:
    """Create the watch and start it with ``worker.app`` (first, before the consumer)."""
    watch = BrokerWatch(worker)
    worker.app.add_dependency(BrokerWatchService(watch))
    return watch
