"""The broker watch's parts on their own: the log rate limit, the stall clock, the probe.

The probe is checked against the real embedded broker, a port nobody listens on, and a server
that accepts connections and never answers (what a frozen broker looks like); the end-to-end
behaviour of a worker under broker faults is in ``tests/reliability/test_broker_faults.py``.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from stream.settings import Settings
from stream.tools.broker import free_port
from stream.worker.broker_watch import (
    STALL_EXIT_CODE,
    BrokerWatch,
    RateLimitFilter,
    StallClock,
    install_log_limit,
)
from stream.worker.metrics import Metrics

ROOT = Path(__file__).resolve().parents[3]


class _Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _record(msg: str, *args: object, name: str = "aiokafka", level: int = logging.ERROR):
    return logging.LogRecord(name, level, __file__, 1, msg, args or None, None)


# -- RateLimitFilter --------------------------------------------------------------------------


def test_first_record_passes_repeats_are_held_back_then_counted() -> None:
    clock = _Clock()
    limit = RateLimitFilter(10.0, clock=clock)
    template = "Unable connect to node with id %s: %s"
    assert limit.filter(_record(template, 1, "refused"))  # the first one always
    held = [limit.filter(_record(template, n, "refused")) for n in range(50)]
    assert not any(held)
    clock.now += 10.0
    after = _record(template, 1, "refused")
    assert limit.filter(after)
    assert after.getMessage() == (
        "Unable connect to node with id 1: refused [50 similar lines suppressed in the last 10 s]"
    )
    clock.now += 10.0  # nothing held back since: no count
    quiet = _record(template, 2, "refused")
    assert limit.filter(quiet) and quiet.getMessage() == "Unable connect to node with id 2: refused"


def test_kinds_are_logger_level_and_template_with_numbers_alike() -> None:
    limit = RateLimitFilter(10.0, clock=_Clock())
    assert limit.filter(_record("Failed fetch messages from %s: %s", 1, "x"))
    assert limit.filter(_record("Group Coordinator Request failed: %s", "x"))  # another template
    assert limit.filter(_record("Failed fetch messages from %s: %s", 1, "x", name="other"))
    assert limit.filter(_record("Failed fetch messages from %s: %s", 1, "x", level=logging.WARNING))
    # Faust formats some messages itself: the numbers are what varies between repeats.
    assert limit.filter(_record("producer buffer full size 114", name="faust"))
    assert not limit.filter(_record("producer buffer full size 151", name="faust"))
    assert limit.filter(_record("producer buffer full of 3 tables", name="faust"))


def test_shopscore_lines_are_held_back_only_when_exactly_repeated() -> None:
    limit = RateLimitFilter(10.0, clock=_Clock())
    line = "%s: reading again from offset %d"
    assert limit.filter(_record(line, "clicks-0", 5, name="shopscore", level=logging.INFO))
    assert limit.filter(_record(line, "clicks-1", 5, name="shopscore", level=logging.INFO))
    assert not limit.filter(_record(line, "clicks-1", 5, name="shopscore", level=logging.INFO))
    assert limit.filter(_record(line, "x", 1, name="stream.kafka.compat", level=logging.INFO))


def test_debug_records_always_pass_and_a_record_is_decided_once() -> None:
    limit = RateLimitFilter(10.0, clock=_Clock())
    assert all(limit.filter(_record("Request %d", n, level=logging.DEBUG)) for n in range(20))
    record = _record("once %s", "x")
    # One record reaching two handlers that share the filter gets one decision.
    assert limit.filter(record) and limit.filter(record)
    repeat = _record("once %s", "y")
    assert not limit.filter(repeat) and not limit.filter(repeat)


def test_the_number_of_kinds_remembered_is_bounded() -> None:
    clock = _Clock()
    limit = RateLimitFilter(10.0, max_kinds=100, clock=clock)
    for n in range(1000):
        clock.now += 0.001
        letters = "".join(chr(97 + int(d)) for d in str(n))  # digits would count as alike
        assert limit.filter(_record(f"distinct {letters}"))
    assert len(limit._kinds) <= 100


def test_installed_on_handlers_it_bounds_a_flood(capsys: pytest.CaptureFixture[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("test_broker_watch.flood")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        install_log_limit([handler])
        install_log_limit([handler])  # idempotent
        assert sum(isinstance(f, RateLimitFilter) for f in handler.filters) == 1
        for n in range(5000):
            logger.error("Unable connect to node with id %s: [Errno 111] refused", n)
        logger.warning("broker has not answered for %d s", 5)
    finally:
        logger.removeHandler(handler)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["Unable connect to node with id 0: [Errno 111] refused",
                     "broker has not answered for 5 s"]  # fmt: skip


# -- StallClock -------------------------------------------------------------------------------


def test_stall_counts_only_not_ready_time_while_the_broker_answers() -> None:
    stall = StallClock(10.0)
    t = 0.0
    assert not stall.observe(t, ready=False, broker_up=True)
    for _ in range(5):
        t += 1.0
        stall.observe(t, ready=False, broker_up=True)
    assert stall.stalled_s == pytest.approx(5.0)
    for _ in range(30):  # a broker outage pauses the count, it does not reset it
        t += 1.0
        assert not stall.observe(t, ready=False, broker_up=False)
    assert stall.stalled_s == pytest.approx(5.0)
    for _ in range(4):
        t += 1.0
        assert not stall.observe(t, ready=False, broker_up=True)
    t += 1.0
    assert stall.observe(t, ready=False, broker_up=True) and stall.expired
    t += 1.0
    assert not stall.observe(t, ready=True, broker_up=True)
    assert stall.stalled_s == 0.0


def test_recovery_progress_and_idle_spares_do_not_count_toward_a_stall() -> None:
    stall = StallClock(10.0)
    t, offsets = 0.0, 0.0
    for _ in range(60):  # a long recovery that keeps reading is never a stall
        t += 1.0
        offsets += 100
        assert not stall.observe(t, ready=False, broker_up=True, progress=offsets)
    for _ in range(9):  # then it stops reading
        t += 1.0
        assert not stall.observe(t, ready=False, broker_up=True, progress=offsets)
    # Offsets set back by a new rebalance are not progress.
    t += 1.0
    assert stall.observe(t, ready=False, broker_up=True, progress=offsets - 500)
    for _ in range(60):  # a worker with no partitions in a settled group is a spare
        t += 1.0
        assert not stall.observe(t, ready=False, broker_up=True, idle=True)


def test_stall_timeout_zero_never_expires_and_long_gaps_count_little() -> None:
    never = StallClock(0.0)
    for t in range(0, 10_000, 5):
        assert not never.observe(float(t), ready=False, broker_up=True)
    stall = StallClock(10.0)
    stall.observe(0.0, ready=False, broker_up=True)
    assert not stall.observe(3600.0, ready=False, broker_up=True)  # host suspended for an hour
    assert stall.stalled_s <= 5.0


# -- the probe --------------------------------------------------------------------------------


def _watch(broker: str, clock: _Clock | None = None, **changes: object) -> BrokerWatch:
    settings = Settings(broker=broker, **{"broker_timeout_ms": 3_000, **changes})
    worker = SimpleNamespace(settings=settings, metrics=Metrics())
    return BrokerWatch(worker, clock=clock or time.monotonic)  # type: ignore[arg-type]


def _gauge(watch: BrokerWatch) -> float:
    return watch.worker.metrics.broker_up._value.get()


@pytest.mark.broker
def test_probe_answers_on_the_real_broker_and_keeps_one_connection(broker) -> None:
    watch = _watch(broker.url)

    async def run() -> list[bool]:
        results = [await watch.probe_once() for _ in range(3)]
        first = watch._conn
        results.append(await watch.probe_once())
        assert watch._conn is first and first is not None and first.connected()
        watch.close()
        assert watch._conn is None and not first.connected()
        return results

    assert asyncio.run(run()) == [True] * 4
    assert watch.status()["broker_up"] is True and _gauge(watch) == 1


def test_a_closed_port_reads_as_down_after_the_broker_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    watch = _watch(f"kafka://127.0.0.1:{free_port()}", clock)
    caplog.set_level(logging.INFO, "shopscore.broker")

    async def run() -> None:
        for _ in range(3):  # 0-2 s: silent, not yet for the timeout
            assert not await watch.probe_once()
            assert watch.status()["broker_up"] is True and _gauge(watch) == 1
            clock.now += 1.0
        for _ in range(15):  # 3-17 s: down; one warning when it goes down, one 10 s later
            assert not await watch.probe_once()
            assert watch.status()["broker_up"] is False and _gauge(watch) == 0
            clock.now += 1.0

    asyncio.run(run())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("broker has not answered for 3 s")
    assert warnings[1].startswith("broker has not answered for 13 s")
    assert watch.status()["broker_silent_s"] == pytest.approx(18.0)
    assert watch._conn is None


def test_a_broker_that_accepts_and_never_answers_reads_as_down_without_leaking() -> None:
    """What a SIGSTOPped broker looks like: connections open, no answer. Each probe gives up
    after its timeout and closes its connection."""
    accepted: list[asyncio.StreamWriter] = []
    closed = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal closed
        accepted.append(writer)
        await reader.read()  # until the probe hangs up
        closed += 1
        writer.close()

    async def run() -> BrokerWatch:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        watch = _watch(f"kafka://127.0.0.1:{port}", broker_timeout_ms=1_000)
        assert watch.probe_timeout_s == 0.5
        started = time.monotonic()
        results = [await watch.probe_once() for _ in range(4)]
        elapsed = time.monotonic() - started
        assert results == [False] * 4
        assert elapsed < 4 * watch.probe_timeout_s + 1.0, elapsed
        await asyncio.sleep(0.2)
        server.close()
        await server.wait_closed()
        assert watch.status()["broker_up"] is False
        return watch

    watch = asyncio.run(run())
    assert len(accepted) == 4 and closed == 4  # one connection per attempt, each closed
    assert watch._conn is None and _gauge(watch) == 0


def test_the_watchdog_reports_once_and_asks_to_exit_with_status_3(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    watch = _watch("kafka://127.0.0.1:9", clock, stall_timeout_ms=5_000)
    detail = {"assigned_partitions": 4, "rebalancing": True, "tables_recovered": True}
    watch.worker.ready = lambda: (False, {**detail, **watch.status()})
    watch.worker.app = SimpleNamespace()  # no tables: recovery progress unknown
    asked: list[int] = []
    watch.on_stall = asked.append
    caplog.set_level(logging.ERROR, "shopscore.broker")
    fired = []
    for _ in range(10):
        fired.append(watch.check_stall())
        clock.now += 1.0
    assert fired == [False] * 5 + [True] * 5
    assert asked == [STALL_EXIT_CODE] and watch.exit_code == STALL_EXIT_CODE
    (error,) = [r.getMessage() for r in caplog.records]
    assert "not ready for 5 s while the broker answers" in error
    assert "rebalancing=True" in error and "exiting with status 3" in error


def test_exit_process_ends_even_a_process_whose_shutdown_hangs() -> None:
    """The hard exit: SIGTERM is ignored (a shutdown that never finishes), yet the process
    ends with the watchdog's status after the grace period."""
    script = textwrap.dedent(
        """
        import signal, time
        from stream.worker.run import exit_process
        signal.signal(signal.SIGTERM, lambda *a: None)
        exit_process(3, grace_s=0.5)
        time.sleep(30)
        """
    )
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60, capture_output=True)
    assert proc.returncode == 3, proc.stderr.decode()[-2000:]
    assert time.monotonic() - started < 20


def test_a_worker_process_ends_even_when_a_thread_outlives_faust() -> None:
    """``run_worker`` arms the same hard exit on every way out: a non-daemon thread that never
    ends (seen after a crash) cannot keep the process alive past the grace period."""
    script = textwrap.dedent(
        """
        import threading, time
        from stream.worker.run import _arm_hard_exit
        threading.Thread(target=time.sleep, args=(60,)).start()
        _arm_hard_exit(1, 0.5)
        raise SystemExit(1)
        """
    )
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60, capture_output=True)
    assert proc.returncode == 1, proc.stderr.decode()[-2000:]
    assert time.monotonic() - started < 20
