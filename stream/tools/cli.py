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

    def broker_settings(self) -> Settings:
        """Settings with a broker: the configured one, else that of a ``shopscore run`` still
        running from this directory (said on stderr), else the one-line error."""
        settings = self.settings()
        if settings.broker is None:
            from stream.tools.running import running_run

            found = running_run(settings)
            if found is not None:
                click.echo(
                    f"using the broker of `shopscore run` (pid {found['pid']}): {found['broker']}",
                    err=True,
                )
                settings = settings.with_broker(found["broker"])
        settings.bootstrap_servers()
        return settings


def _fail(exc: ShopscoreError) -> None:
    click.echo(f"shopscore: error: {exc}", err=True)
    sys.exit(2 if isinstance(exc, ConfigError) else 1)


def _open_out(path: Path) -> Any:
    try:
        return open(path, "wb")  # the caller closes it
    except OSError as exc:
        raise ShopscoreError(f"cannot write {path}: {exc.strerror or exc}") from None


def _parse_time(value: str | None) -> int | None:
    if value is None:
        return None
    from stream.contract.validation import parse_ts

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
    from stream.tools.embedded import DemoOptions, run_embedded

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
    from stream.worker.run import run_worker

    try:
        settings = obj.settings()
        settings.bootstrap_servers()
        from stream.kafka.admin import check_reachable

        check_reachable(settings)
        run_worker(settings)
    except ShopscoreError as exc:
        _fail(exc)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=9092, show_default=True)
@click.pass_obj
def broker(obj: _Context, host: str, port: int) -> None:
    """The embedded Kafka-protocol broker (Tansu, memory storage) in the foreground."""
    from stream.tools.broker import EmbeddedBroker

    # Before the broker starts: a SIGTERM sent as soon as the banner shows must stop it cleanly.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    embedded = EmbeddedBroker(host, port, binary=obj.settings().broker_bin)
    code = 0
    try:
        embedded.start()
        click.echo(f"broker ready: {embedded.url}  (pid {embedded.pid}; Ctrl-C stops it)")
        click.echo(f"  export SHOPSCORE_BROKER={embedded.url}")
        code = embedded.wait()
    except ShopscoreError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        code = 0
    finally:
        embedded.stop()
    sys.exit(code if code and code > 0 else 0)


_FRACTION = click.FloatRange(0.0, 1.0)


@cli.command()
@click.option("--users", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=30,
              show_default=True)  # fmt: skip
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="NAME.jsonl; the truth file goes beside it as NAME.truth.json")  # fmt: skip
@click.option("--change-day", type=click.FloatRange(min=0),
              help="Plant a change in behaviour from this day on.")  # fmt: skip
@click.option("--bad-fraction", type=_FRACTION, default=0.0, show_default=True)
@click.option("--duplicate-fraction", type=_FRACTION, default=0.0, show_default=True)
@click.option("--orders-only", is_flag=True,
              help="Only orders, as a shop's order history: customers who buy and drop out "
                   "as MBG/NBD assumes (no clicks, carts, dirt or change).")  # fmt: skip
def generate(
    users, days, seed, out, change_day, bad_fraction, duplicate_fraction, orders_only
) -> None:
    """Write a synthetic event log (NAME.jsonl) and its ground truth (NAME.truth.json)."""
    from stream.tools.generator import GeneratorConfig, truth_path, write_log
    from stream.tools.generator.orders_only import OrdersOnlyConfig, write_orders_only
    from stream.tools.progress import StatusLine

    if orders_only:
        if change_day is not None or bad_fraction or duplicate_fraction:
            _fail(ConfigError("--orders-only takes no --change-day, --bad-fraction or "
                              "--duplicate-fraction"))  # fmt: skip
        try:
            summary = write_orders_only(OrdersOnlyConfig(users=users, days=days, seed=seed), out)
        except OSError as exc:
            _fail(ShopscoreError(f"cannot write {out} or {truth_path(out)}: {exc.strerror or exc}"))
        click.echo(json.dumps(summary))
        return
    try:
        config = GeneratorConfig(
            users=users,
            days=days,
            seed=seed,
            change_day=change_day,
            bad_fraction=bad_fraction,
            duplicate_fraction=duplicate_fraction,
        )
    except ValueError as exc:
        _fail(ConfigError(str(exc)))
    status = StatusLine()
    try:
        summary = write_log(
            config, out, progress=lambda done, total: status.update(f"users {done:,}/{total:,}")
        )
    except OSError as exc:
        status.close()
        _fail(ShopscoreError(f"cannot write {out} or {truth_path(out)}: {exc.strerror or exc}"))
    status.close()
    click.echo(json.dumps(summary))


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--until", "until", help="Publish events up to T, then advance the clock to T.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True),
              help="Events per second (default: as fast as possible).")  # fmt: skip
@click.pass_obj
def replay(obj: _Context, file: Path, until: str | None, rate: float | None) -> None:
    """Publish a log's events in event-time order, keyed by user_id."""
    from stream.tools.progress import StatusLine
    from stream.tools.replay import ReplaySummary, check_clock_time, publish, read_log

    until_ms = _parse_time(until)
    try:
        settings = obj.broker_settings()
        if until_ms is not None:
            check_clock_time(settings, until_ms)  # before reading a large log, not after
        summary = ReplaySummary()
        events = read_log(file, summary)
        total = len(events)
        if not total:
            why = (
                f"none of its {summary.skipped:,} lines is a JSON object with a user_id and a type"
                if summary.skipped
                else "it is empty"
            )
            raise ConfigError(
                f"{file} holds no event to publish ({why}): expected JSON lines as "
                "`shopscore generate` writes"
            )
        if summary.skipped:
            click.echo(f"warning: {summary.skipped} lines are not routable events", err=True)
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
    from stream.tools.dump import dump_topic

    try:
        settings = obj.broker_settings()
        # Before reading the topic: a bad --out must not cost a full read first.
        sink = _open_out(out) if out else sys.stdout.buffer
        records = asyncio.run(dump_topic(settings, topic, latest_per_key=latest_per_key))
    except ShopscoreError as exc:
        _fail(exc)
    try:
        for rec in records:
            sink.write(orjson.dumps(rec) + b"\n")
    finally:
        if out:
            sink.close()
        else:
            sink.flush()


@cli.command()
@click.option(
    "--data", "log", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
    help="Event log: JSONL (as `generate` writes) or Parquet.",
)  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--models", "names", default="churn,purchase_power,interest,cart_recs",
              show_default=True, help="Comma-separated models to train.")  # fmt: skip
@click.option("--epochs", type=click.IntRange(min=1), default=25, show_default=True,
              help="At most (early stop).")  # fmt: skip
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="TensorFlow threads.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_obj
def train(obj: _Context, log: Path, out: Path, names: str, epochs: int, threads: int,
          seed: int) -> None:  # fmt: skip
    """Train the Keras models from an event log and evaluate them on its later period.

    Features are computed with the worker's settings (SHOPSCORE_SESSION_GAP,
    SHOPSCORE_ALLOWED_LATENESS, SHOPSCORE_DEDUP_*), churn is labelled over
    SHOPSCORE_CHURN_HORIZON; each manifest records them, and a worker running other values
    refuses the models. Needs the train extra (pip install 'shopscore[train]'). Progress goes
    to stderr; the held-out metrics next to their baselines are printed as JSON and written
    beside each model.
    """
    from offline_train.backend import keras_backend

    try:
        settings = obj.settings()
        keras_backend(threads, seed)  # fail fast, before reading a large log
        from offline_train.dataset import DatasetConfig
        from offline_train.train import MODEL_NAMES, TrainConfig
        from offline_train.train import train as run_training

        wanted = tuple(n.strip() for n in names.split(",") if n.strip())
        unknown = sorted(set(wanted) - set(MODEL_NAMES))
        if unknown:
            raise ConfigError(f"unknown model(s) {unknown}; choose from {list(MODEL_NAMES)}")
        config = TrainConfig(
            dataset=DatasetConfig(
                churn_horizon_days=settings.churn_horizon_ms / 86_400_000,
                seed=seed,
                features=settings.feature_config(),
            ),
            epochs=epochs,
            threads=threads,
            seed=seed,
        )
        reports = run_training(
            log, out, config, echo=lambda line: click.echo(line, err=True), names=wanted
        )
    except ShopscoreError as exc:
        _fail(exc)
    click.echo(json.dumps(reports, indent=2))


@cli.command(name="export")
@click.option("--models", "models_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="What `shopscore train --out` wrote.")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where NAME.onnx + NAME.json go (stream/models/shipped to ship them).")  # fmt: skip
@click.option("--threads", type=int, default=2, show_default=True)
def export_models(models_dir: Path, out: Path, threads: int) -> None:
    """Convert trained models to ONNX, check parity with Keras, write manifests."""
    from offline_train.backend import keras_backend

    try:
        keras_backend(threads)
        from exporters.onnx_export import export_all

        manifests = export_all(models_dir, out, echo=lambda line: click.echo(line, err=True),
                               threads=threads)  # fmt: skip
    except ShopscoreError as exc:
        _fail(exc)
    click.echo(json.dumps({n: {"version": m["version"], "parity": m["parity"],
                                "timing_batch_1000_ms": m["timing_batch_1000_ms"]}
                           for n, m in manifests.items()}, indent=2))  # fmt: skip


@cli.command()
@click.option("--events", type=int, help="Events for the throughput phases [100000].")
@click.option("--users", type=int, help="Users in state for RSS/recovery, scaled to 100k [100000].")
@click.option("--rate", type=float, help="Input rate of the latency phase, events/s [2000].")
@click.option("--latency-s", type=float, help="Duration of the latency phase, seconds [10].")
@click.option("--seed", type=int, help="Seed of the generated events [1].")
@click.option("--backfill-users", type=int,
              help="Customers of the backfill phase's 270-day orders-only history [20000].")  # fmt: skip
@click.option("--quick", is_flag=True, help="Tiny sizes (CI: proves the command, < 60 s).")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON report.")
@click.option(
    "--broker-kind",
    type=click.Choice(["embedded", "kafka"]),
    help="The broker bench starts when SHOPSCORE_BROKER is unset: embedded (Tansu) "
    "or kafka (Apache Kafka 4, the compose file's, from Maven) [embedded].",
)
@click.pass_obj
def bench(obj: _Context, quick: bool, as_json: bool, **sizes: Any) -> None:
    """Measure throughput, latency percentiles, memory and recovery; print JSON.

    Against a broker it starts (--broker-kind) unless SHOPSCORE_BROKER is set. Progress goes
    to stderr.
    """
    import dataclasses

    from stream.tools.bench import BenchOptions, run_bench

    options = BenchOptions.quick() if quick else BenchOptions()
    options = dataclasses.replace(options, **{k: v for k, v in sizes.items() if v is not None})
    try:
        report = run_bench(obj.settings(), options)
    except ShopscoreError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    lat = report["latency_ms"]
    lines = [
        ("throughput (full scoring path)", f"{report['throughput_eps']:,.0f} events/s"),
        ("bare Faust forwarder", f"{report['bare_throughput_eps']:,.0f} events/s"),
        ("ratio to bare", f"{report['ratio_to_bare']:.2f}"),
        (f"latency at {lat['rate_eps']:,.0f} events/s",
         f"p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms, "
         f"max {lat['max']:.0f} ms"),
        ("worker RSS per 100,000 users", f"{report['rss_mb_per_100k_users']:,.0f} MB"),
        ("state per user", f"{report['state_bytes_per_user']:,.0f} bytes"),
        ("recovery per 100,000 users", f"{report['recovery_s_per_100k_users']:.1f} s"),
        ("backfill (orders-only history)",
         f"{report['backfill_eps']:,.0f} orders/s, {report['backfill_s']:.1f} s "
         f"({report['ratio_backfill_to_throughput']:.2f} of the full path)"),
    ]  # fmt: skip
    below = report.get("latency_below_saturation_ms")
    if below:
        lines.insert(4, (f"latency at {below['rate_eps']:,.0f} events/s",
                         f"p50 {below['p50']:.0f} ms, p95 {below['p95']:.0f} ms, "
                         f"p99 {below['p99']:.0f} ms, max {below['max']:.0f} ms"))  # fmt: skip
    for name, value in lines:
        click.echo(f"{name:<34} {value}")
    if report["scaled_to_100k"]:
        click.echo(f"(memory and recovery measured with {report['measured_users']:,} users, "
                   "scaled; --json for everything)")  # fmt: skip


def _raise_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM behaves like Ctrl-C: unwind through ``finally`` blocks that stop children."""
    raise KeyboardInterrupt


def main() -> None:
    """Run the CLI; usage errors are one line too (click prints a usage block by default)."""
    try:
        code = cli.main(prog_name="shopscore", standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "shopscore"
        message = exc.format_message().rstrip(".")
        click.echo(f"shopscore: error: {message} (see `{where} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"shopscore: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("shopscore: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
