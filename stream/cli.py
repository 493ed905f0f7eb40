"""The ``shopscore`` command line.

Global options override ``SHOPSCORE_*`` variables; both end up in one ``Settings`` object built
here, once, and passed down. Errors shopscore raises on purpose are printed as one line with
what to do, and exit with status 2 (configuration) or 1 (runtime), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from stream import __version__
from stream.errors import ConfigError, Rejected, ShopscoreError
from stream.settings import Settings

__all__ = ["main"]


class _Context:
    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = overrides

    def settings(self, **extra: Any) -> Settings:
        return Settings.from_env(**{**self.overrides, **extra})


def _fail(exc: ShopscoreError) -> None:
    click.echo(f"shopscore: error: {exc}", err=True)
    sys.exit(2 if isinstance(exc, ConfigError) else 1)


def _parse_time(value: str | None) -> int | None:
    if value is None:
        return None
    from stream.validation import parse_ts

    try:
        return parse_ts(value)
    except Rejected as exc:
        raise click.BadParameter(
            f"{value!r}: use ISO-8601 or epoch milliseconds ({exc.detail})"
        ) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="shopscore")
@click.option("--broker", help="Kafka URL, e.g. kafka://127.0.0.1:9092 [SHOPSCORE_BROKER].")
@click.option("--partitions", type=int, help="Partitions of every topic [SHOPSCORE_PARTITIONS].")
@click.option("--store", help="Table store: memory:// or rocksdb:// [SHOPSCORE_STORE].")
@click.option("--web-port", type=int, help="Worker HTTP port [SHOPSCORE_WEB_PORT].")
@click.option(
    "--data-dir", type=click.Path(path_type=Path), help="Local state [SHOPSCORE_DATA_DIR]."
)
@click.option("--app-id", help="Consumer group and changelog prefix [SHOPSCORE_APP_ID].")
@click.option("--topic-prefix", help="Prefix of every topic name [SHOPSCORE_TOPIC_PREFIX].")
@click.option("-l", "--log-level", help="debug, info, warning, error [SHOPSCORE_LOG_LEVEL].")
@click.pass_context
def cli(ctx: click.Context, **overrides: Any) -> None:
    """shopscore: real-time customer scoring on Kafka.

    Start with `shopscore run` (embedded broker, worker and demo traffic).
    """
    ctx.obj = _Context(overrides)
    try:
        ctx.obj.settings()  # fail fast on a malformed variable, before any work starts
    except ShopscoreError as exc:
        _fail(exc)


@cli.command()
@click.option("--max-events", type=int, help="Stop after this many demo events are processed.")
@click.option(
    "--rate", type=float, default=2000.0, show_default=True, help="Demo events/s (0: max)."
)
@click.option("--users", type=int, default=2000, show_default=True, help="Demo population.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def run(obj: _Context, max_events: int | None, rate: float, users: int, seed: int, as_json: bool):
    """Embedded broker (unless one is configured) + worker + demo producer. Ctrl-C stops all."""
    from stream.embedded import DemoOptions, run_embedded

    try:
        settings = obj.settings()
        summary = run_embedded(
            settings,
            DemoOptions(users=users, seed=seed, rate=rate or None, max_events=max_events),
        )
    except ShopscoreError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo("summary:")
        for key, value in summary.items():
            click.echo(f"  {key:<26} {value}")


@cli.command()
@click.pass_obj
def worker(obj: _Context) -> None:
    """A Faust worker against the configured broker (what docker-compose runs)."""
    from stream.worker import run_worker

    try:
        settings = obj.settings()
        settings.bootstrap_servers()
        from stream.topics import check_reachable

        check_reachable(settings)
        run_worker(settings)
    except ShopscoreError as exc:
        _fail(exc)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=9092, show_default=True)
def broker(host: str, port: int) -> None:
    """The embedded Kafka-protocol broker (Tansu, memory storage) in the foreground."""
    from stream.broker import EmbeddedBroker

    embedded = EmbeddedBroker(host, port)
    try:
        embedded.start()
    except ShopscoreError as exc:
        _fail(exc)
    click.echo(f"broker ready: {embedded.url}  (pid {embedded.pid}; Ctrl-C stops it)")
    click.echo(f"  export SHOPSCORE_BROKER={embedded.url}")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = embedded.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        embedded.stop()
    sys.exit(code if code and code > 0 else 0)


@cli.command()
@click.option("--users", type=int, default=1000, show_default=True)
@click.option("--days", type=float, default=30, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="FILE.jsonl")
@click.option("--change-day", type=float, help="Plant a change in behaviour from this day on.")
@click.option("--bad-fraction", type=float, default=0.0, show_default=True)
@click.option("--duplicate-fraction", type=float, default=0.0, show_default=True)
def generate(users, days, seed, out, change_day, bad_fraction, duplicate_fraction) -> None:
    """Write a synthetic event log (JSONL) and its ground truth (FILE.truth.json)."""
    from stream.generator import GeneratorConfig, write_log
    from stream.progress import StatusLine

    status = StatusLine()
    config = GeneratorConfig(
        users=users,
        days=days,
        seed=seed,
        change_day=change_day,
        bad_fraction=bad_fraction,
        duplicate_fraction=duplicate_fraction,
    )
    summary = write_log(
        config, out, progress=lambda done, total: status.update(f"users {done:,}/{total:,}")
    )
    status.close()
    click.echo(json.dumps(summary))


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--until", "until", help="Publish events up to T, then advance the clock to T.")
@click.option("--rate", type=float, help="Events per second (default: as fast as possible).")
@click.pass_obj
def replay(obj: _Context, file: Path, until: str | None, rate: float | None) -> None:
    """Publish a log's events in event-time order, keyed by user_id."""
    from stream.progress import StatusLine
    from stream.replay import ReplaySummary, publish, read_log

    until_ms = _parse_time(until)
    try:
        settings = obj.settings()
        settings.bootstrap_servers()
        summary = ReplaySummary()
        events = read_log(file, summary)
        if summary.skipped:
            click.echo(f"warning: {summary.skipped} lines are not routable events", err=True)
        total = len(events)
        status = StatusLine()
        asyncio.run(
            publish(
                settings,
                events,
                until_ms=until_ms,
                rate=rate,
                summary=summary,
                progress=lambda n: status.update(f"published {n:,}/{total:,} ({n / total:.0%})"),
            )
        )
        status.close()
    except ShopscoreError as exc:
        _fail(exc)
    click.echo(json.dumps(summary.as_dict()))


@cli.command()
@click.argument("topic")
@click.option("--latest-per-key", is_flag=True, help="Only the last record of each key.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout.")
@click.pass_obj
def dump(obj: _Context, topic: str, latest_per_key: bool, out: Path | None) -> None:
    """Read TOPIC to its current end and write JSON lines {key, value, partition, offset}."""
    from stream.dump import dump_topic

    try:
        settings = obj.settings()
        settings.bootstrap_servers()
        records = asyncio.run(dump_topic(settings, topic, latest_per_key=latest_per_key))
    except ShopscoreError as exc:
        _fail(exc)
    sink = open(out, "wb") if out else sys.stdout.buffer  # noqa: SIM115
    try:
        for rec in records:
            sink.write(orjson.dumps(rec) + b"\n")
    finally:
        if out:
            sink.close()
        else:
            sink.flush()


def _raise_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM behaves like Ctrl-C: unwind through ``finally`` blocks that stop children."""
    raise KeyboardInterrupt


def main() -> None:
    cli(prog_name="shopscore")


if __name__ == "__main__":
    main()
