"""The orders-only generator: valid contract events, deterministic, and the BG/NBD structure
(heterogeneous rates, dropout after orders) it claims."""

from __future__ import annotations

import statistics
from collections import Counter

import orjson

from stream.contract.validation import decode_event
from stream.settings import Limits
from stream.tools.generator.orders_only import OrdersOnlyConfig, generate_orders_only


def test_every_event_is_a_valid_order_in_event_time_order() -> None:
    events, truth = generate_orders_only(OrdersOnlyConfig(users=300, days=120, seed=4))
    assert events and {e["type"] for e in events} == {"order"}
    assert [(e["ts"], e["event_id"]) for e in events] == sorted(
        (e["ts"], e["event_id"]) for e in events
    )
    assert len({e["event_id"] for e in events}) == len(events)
    config = OrdersOnlyConfig(users=300, days=120, seed=4)
    assert all(config.start_ms <= e["ts"] < config.end_ms for e in events)
    limits = Limits()
    for event in events:
        payload = {k: v for k, v in event.items() if k != "type"}
        order = decode_event("order", orjson.dumps(payload), now_ms=None, limits=limits)
        assert order.user_id == event["user_id"] and order.total == event["total"]
    per_user = Counter(e["user_id"] for e in events)
    assert {u: t["orders"] for u, t in truth["users"].items() if t["orders"]} == dict(per_user)


def test_the_same_config_gives_the_same_events() -> None:
    config = OrdersOnlyConfig(users=200, days=90, seed=9)
    assert generate_orders_only(config) == generate_orders_only(config)
    assert (
        generate_orders_only(config)[0]
        != generate_orders_only(OrdersOnlyConfig(users=200, days=90, seed=10))[0]
    )


def test_rates_and_dropout_follow_their_distributions() -> None:
    config = OrdersOnlyConfig(users=4_000, days=270, seed=2)
    _events, truth = generate_orders_only(config)
    users = list(truth["users"].values())
    # Gamma(r, alpha) rates, Beta(a, b) dropout probabilities: their means.
    assert abs(statistics.fmean(u["rate_per_day"] for u in users) - config.r / config.alpha) < 0.002
    assert (
        abs(statistics.fmean(u["dropout"] for u in users) - config.a / (config.a + config.b))
        < 0.015
    )
    # Faster buyers buy more; whoever dropped out stopped at an order.
    fast = [u["orders"] for u in users if u["rate_per_day"] > 2 * config.r / config.alpha]
    slow = [u["orders"] for u in users if u["rate_per_day"] < 0.5 * config.r / config.alpha]
    assert statistics.fmean(fast) > 2 * statistics.fmean(slow)
    assert 0.3 < sum(u["alive_at_end"] for u in users) / len(users) < 0.9


def test_generate_orders_only_writes_a_log_replay_reads(tmp_path) -> None:
    from click.testing import CliRunner

    from stream.tools.cli import cli
    from stream.tools.replay import read_log

    out = tmp_path / "orders.jsonl"
    result = CliRunner().invoke(
        cli, ["generate", "--orders-only", "--users", "80", "--days", "90", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.output)
    logged = list(read_log(out))
    assert summary["events"] == len(logged) > 0 and {e.kind for e in logged} == {"order"}
    assert (tmp_path / "orders.truth.json").exists()
    refused = CliRunner().invoke(
        cli, ["generate", "--orders-only", "--bad-fraction", "0.1", "--out", str(out)]
    )
    assert refused.exit_code == 2 and "--orders-only takes no" in refused.output
