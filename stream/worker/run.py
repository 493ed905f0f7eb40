"""Running one Faust worker in the foreground (``shopscore worker``).

Besides starting Faust, this is where the process-wide parts of the broker-faults work live
(``stream.worker.broker_watch``): the log handlers get the rate limit on repeated records, and the
watchdog is armed to end the process: a worker that stays not ready while the broker answers
stops (SIGTERM to itself, Faust's clean shutdown) and exits with status
``STALL_EXIT_CODE`` (3); if that shutdown has not finished after ``EXIT_GRACE_S`` the process
is ended hard with the same status, so a supervisor always gets it back in bounded time. The
same bound applies to every exit: once Faust has stopped, lingering threads cannot keep the
process alive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time

import faust

from stream.errors import ConfigError
from stream.kafka.admin import check_session_timeout, check_transactions, ensure_topics
from stream.settings import Settings
from stream.worker.app import create_app
from stream.worker.broker_watch import install_log_limit
from stream.worker.gc_pauses import GcPauses, freeze_startup_heap, tune_collections
from stream.worker.loop import new_event_loop

__all__ = ["EXIT_GRACE_S", "check_web_port", "run_worker"]

log = logging.getLogger("shopscore.worker")

#: How long a worker that gave up may take to shut down cleanly before it is ended hard.
EXIT_GRACE_S = 10.0


class _Worker(faust.Worker):
    """Faust's worker, with the rate limit on repeated log records once logging is set up."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        install_log_limit(list(logger.handlers))


def _hard_exit(code: int, grace_s: float) -> None:
    time.sleep(grace_s)
    log.error("clean shutdown did not finish within %.0f s; exiting now (status %d)", grace_s, code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # nothing left to report it to
            stream.flush()
    os._exit(code)


def _arm_hard_exit(code: int, grace_s: float) -> None:
    threading.Thread(
        target=_hard_exit, args=(code, grace_s), name="shopscore-hard-exit", daemon=True
    ).start()


def exit_process(code: int, grace_s: float = EXIT_GRACE_S) -> None:
    """Stop this worker process with ``code``: a clean Faust shutdown now (the same path as a
    supervisor's SIGTERM), and a hard exit if it has not ended after ``grace_s``."""
    _arm_hard_exit(code, grace_s)
    os.kill(os.getpid(), signal.SIGTERM)


def _status(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def check_web_port(host: str, port: int) -> None:
    """Fail with one line when the HTTP port is taken (Faust would print an 80-line traceback
    after starting everything else)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds it
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve HTTP on {host}:{port} ({exc.strerror or exc}): another process "
                "(another worker?) holds it; set SHOPSCORE_WEB_PORT or --web-port to a free port"
            ) from None


def run_worker(settings: Settings) -> None:
    """Create the contract topics, then run a worker until SIGINT/SIGTERM.

    Topics are created up front with the configured partition count, because Faust would
    otherwise create input topics on first use with whatever default the broker has, breaking
    co-partitioning of events and the users table.

    Exits with status 0 after SIGINT/SIGTERM, 1 after a crash, ``STALL_EXIT_CODE`` (3)
    when the watchdog gave up on a worker that stayed not ready while the broker answered, and
    ``LOG_RESET_EXIT_CODE`` (4) when an input log restarted below what it had processed;
    whatever the path, the process ends at most ``EXIT_GRACE_S`` after Faust has stopped.
    """
    check_web_port(settings.web_host, settings.web_port)
    loop = new_event_loop(settings.event_loop)
    loop.run_until_complete(ensure_topics(settings))
    loop.run_until_complete(check_session_timeout(settings))
    loop.run_until_complete(check_transactions(settings))
    shop = create_app(settings)
    watch = shop.broker_watch
    watch.on_stall = exit_process
    fatal: list[int] = []  # the status a failure asked for: Faust's own ending says 0 or 1

    def on_fatal(code: int) -> None:
        fatal.append(code)
        exit_process(code)

    shop.on_fatal = on_fatal
    logging.getLogger("shopscore").setLevel(settings.log_level.upper().replace("WARN", "WARNING"))
    worker = _Worker(
        shop.app,
        loop=loop,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=True,
    )
    GcPauses(shop.metrics.registry).install()
    # What exists now lives as long as the process: full collections need not walk it.
    freeze_startup_heap()
    tune_collections()  # users' decoded states come and go: full collections less often
    code = 1
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = _status(exc.code)
    finally:
        if watch.exit_code is not None:
            code = watch.exit_code
        elif fatal:
            code = fatal[0]
        # Faust's threads can keep the interpreter from ending once Faust has stopped (seen
        # after a crash: the process lingered for good after "Reraising original exception").
        _arm_hard_exit(code, EXIT_GRACE_S)
    raise SystemExit(code)
