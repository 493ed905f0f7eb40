"""Judging what a worker published against what the log's future says (online quality).

The scores are read back from the output topics (``shopscore dump``), the truth from the
event log that was replayed: a churn score is right when no order follows within its horizon,
an interest ranking when it holds the category of the user's next action, a recommendation
list when it holds items the user adds or buys within the recommendation window, a lifetime
value by what the user spent over its period (against the naive forecast "the last period
repeats"). Only messages whose outcome the log can tell are judged (a churn horizon or a value
period must end inside the log).

Churn is judged per expert: the published blend and the ONNX model at the primary horizon, and
the BTYD expert (``components.btyd``) at each of its horizons: ranking (AUC), Brier score and
calibration (mean predicted against observed).

    python -m offline_train.judge LOG.jsonl DUMP_DIR   # DUMP_DIR/scores.churn.jsonl, ...
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from offline_train.metrics import (
    brier,
    hit_rate_at_k,
    mae,
    mrr,
    ndcg_at_k,
    recall_at_k,
    rmse,
    roc_auc,
)
from offline_train.online_eval import clean_log
from stream.contract.events import CartChange, Click, Event, Order
from stream.settings import parse_duration_ms

__all__ = ["LogTruth", "judge"]

DAY_MS = 86_400_000


class LogTruth:
    """Per user, the orders, actions (with category) and items added/bought, by event time."""

    def __init__(self, events: Iterable[Event]) -> None:
        self.orders: dict[str, list[int]] = {}
        #: Per user, (ts, order total) by event time.
        self.spend: dict[str, list[tuple[int, float]]] = {}
        self.actions: dict[str, list[tuple[int, str]]] = {}
        self.items: dict[str, list[tuple[int, str]]] = {}
        self.end_ms = 0
        self.start_ms: int | None = None
        for e in events:
            self.end_ms = max(self.end_ms, e.ts)
            self.start_ms = e.ts if self.start_ms is None else min(self.start_ms, e.ts)
            if isinstance(e, Order):
                self.orders.setdefault(e.user_id, []).append(e.ts)
                self.spend.setdefault(e.user_id, []).append((e.ts, e.total))
                for line in e.items:
                    self.items.setdefault(e.user_id, []).append((e.ts, line.item_id))
                if e.items:
                    self.actions.setdefault(e.user_id, []).append((e.ts, e.items[0].category))
            elif isinstance(e, Click):
                self.actions.setdefault(e.user_id, []).append((e.ts, e.category))
            elif isinstance(e, CartChange) and e.action == "add":
                self.actions.setdefault(e.user_id, []).append((e.ts, e.category))
                self.items.setdefault(e.user_id, []).append((e.ts, e.item_id))
        for table in (self.orders, self.actions, self.items, self.spend):
            for rows in table.values():
                rows.sort()

    def churned(self, user: str, ts: int, horizon_ms: int) -> bool | None:
        """No order in ``(ts, ts + horizon]``; None when the horizon ends after the log."""
        if ts + horizon_ms > self.end_ms:
            return None
        orders = self.orders.get(user, [])
        i = bisect.bisect_right(orders, ts)
        return not (i < len(orders) and orders[i] <= ts + horizon_ms)

    def spent(self, user: str, start: int, end: int) -> tuple[int, float] | None:
        """Orders and spend in ``(start, end]``; None when ``end`` is after the log."""
        if end > self.end_ms:
            return None
        rows = self.spend.get(user, [])
        i = bisect.bisect_right(rows, (start, float("inf")))
        orders, total = 0, 0.0
        while i < len(rows) and rows[i][0] <= end:
            orders, total = orders + 1, total + rows[i][1]
            i += 1
        return orders, total

    def next_category(self, user: str, ts: int) -> str | None:
        actions = self.actions.get(user, [])
        i = bisect.bisect_right(actions, (ts, "\uffff"))
        while i < len(actions):
            if actions[i][1] != "unknown":
                return actions[i][1]
            i += 1
        return None

    def items_after(self, user: str, ts: int, window_ms: int) -> set[str]:
        rows = self.items.get(user, [])
        i = bisect.bisect_right(rows, (ts, "\uffff"))
        out = set()
        while i < len(rows) and rows[i][0] <= ts + window_ms:
            out.add(rows[i][1])
            i += 1
        return out


def judge(
    truth: LogTruth,
    outputs: dict[str, Sequence[dict[str, Any]]],
    *,
    interest_k: int = 5,
    recs_k: int = 10,
    recs_window_ms: int = 7 * DAY_MS,
) -> dict[str, Any]:
    """Quality of published scores (``outputs``: topic -> message values)."""
    report: dict[str, Any] = {"churn": _churn(truth, outputs.get("scores.churn", ()))}
    report["value"] = _value(truth, outputs.get("scores.purchase_power", ()))
    ranked, answers = [], []
    for value in outputs.get("scores.interest", ()):
        answer = truth.next_category(value["user_id"], value["ts"])
        if answer is None:
            continue
        ranked.append([c["category"] for c in value["top_categories"]])
        answers.append(answer)
    report["interest"] = {
        "judged": len(answers),
        f"hit_rate_at_{interest_k}": hit_rate_at_k(ranked, answers, interest_k),
        "mrr": mrr(ranked, answers),
    }
    recs, relevant = [], []
    for value in outputs.get("recs.cart", ()):
        later = truth.items_after(value["user_id"], value["ts"], recs_window_ms)
        if not later:
            continue
        recs.append([i["item_id"] for i in value["items"]])
        relevant.append(later)
    report["recs"] = {
        "judged": len(recs),
        f"recall_at_{recs_k}": recall_at_k(recs, relevant, recs_k),
        f"ndcg_at_{recs_k}": ndcg_at_k(recs, relevant, recs_k),
    }
    return report


def _binary(y: list[bool], p: list[float]) -> dict[str, Any]:
    """Ranking, Brier score and calibration of probabilities ``p`` of outcomes ``y``."""
    y_arr, p_arr = np.array(y, bool), np.array(p, float)
    if not len(y_arr):
        return {"judged": 0}
    return {
        "judged": len(y_arr),
        "auc": roc_auc(y_arr, p_arr),
        "brier": brier(y_arr.astype(float), p_arr),
        "mean_predicted": float(p_arr.mean()),
        "observed": float(y_arr.mean()),
    }


def _churn(truth: LogTruth, messages: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The published blend, ONNX and the online stacker at the primary horizon; the BTYD
    expert and the published figures at each of theirs."""
    ys, blended, onnx, online = [], [], [], []
    btyd: dict[str, tuple[list[bool], list[float]]] = {}
    horizons: dict[str, tuple[list[bool], list[float]]] = {}
    with_btyd = 0
    for value in messages:
        components = value.get("components", {})
        horizon = round(value["horizon_days"] * DAY_MS)
        y = truth.churned(value["user_id"], value["ts"], horizon)
        if y is not None:
            ys.append(y)
            blended.append(value["churn_probability"])
            onnx.append(components.get("onnx", value["churn_probability"]))
            online.append(components.get("online", value["churn_probability"]))
            with_btyd += components.get("btyd") is not None
        for into, figures in (
            (btyd, (components.get("btyd") or {}).get("churn") or {}),
            (horizons, value.get("horizons") or {}),
        ):
            for label, p in figures.items():
                y_h = truth.churned(value["user_id"], value["ts"], parse_duration_ms(label))
                if y_h is not None and p is not None:
                    rows = into.setdefault(label, ([], []))
                    rows[0].append(y_h)
                    rows[1].append(p)
    y_arr = np.array(ys, bool)
    return {
        "judged": len(ys),
        "positive_rate": float(y_arr.mean()) if ys else None,
        "auc_published": roc_auc(y_arr, np.array(blended)) if ys else None,
        "auc_onnx_alone": roc_auc(y_arr, np.array(onnx)) if ys else None,
        "published": _binary(ys, blended),
        "onnx": _binary(ys, onnx),
        "online": _binary(ys, online),
        "btyd_coverage": with_btyd / len(ys) if ys else None,
        "btyd": _per_horizon(btyd),
        # The published figure at every horizon (null where it was null: no BTYD view).
        "horizons": _per_horizon(horizons),
    }


def _per_horizon(rows: dict[str, tuple[list[bool], list[float]]]) -> dict[str, Any]:
    return {label: _binary(*pair) for label, pair in sorted(rows.items(), key=_by_horizon)}


def _by_horizon(item: tuple[str, Any]) -> int:
    """Orders ``components.btyd.churn``'s labels (``"30d"``...) by their duration."""
    return parse_duration_ms(item[0])


def _value(truth: LogTruth, messages: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Expected orders and lifetime value against what each customer did over ``clv_days``
    after the message, and the naive forecast that they do what they did over the same span
    before it (for customers whose span before starts inside the log)."""
    rows: list[tuple[float, float, int, float, int, float]] = []
    start = truth.start_ms or 0
    for value in messages:
        if value.get("clv") is None or value.get("clv_days") is None:
            continue
        period = round(value["clv_days"] * DAY_MS)
        user, ts = value["user_id"], value["ts"]
        after = truth.spent(user, ts, ts + period)
        if after is None or ts - period < start:
            continue
        before = truth.spent(user, ts - period, ts)
        assert before is not None
        rows.append((value["expected_orders"], value["clv"], *after, *before))
    if not rows:
        return {"judged": 0}
    e_orders, clv, orders, spend, orders_before, spend_before = (
        np.array(column, float) for column in zip(*rows, strict=True)
    )
    return {
        "judged": len(rows),
        "clv_mae": mae(spend, clv),
        "clv_rmse": rmse(spend, clv),
        "naive_clv_mae": mae(spend, spend_before),
        "naive_clv_rmse": rmse(spend, spend_before),
        "orders_mae": mae(orders, e_orders),
        "naive_orders_mae": mae(orders, orders_before),
        "mean_clv": float(clv.mean()),
        "mean_spend": float(spend.mean()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("dumps", type=Path, help="directory of TOPIC.jsonl files from dump")
    args = parser.parse_args(argv)
    outputs = {}
    for topic in ("scores.churn", "scores.interest", "scores.purchase_power", "recs.cart"):
        path = args.dumps / f"{topic}.jsonl"
        if not path.exists() and topic == "scores.purchase_power":
            continue  # dumps taken before the value was judged
        outputs[topic] = [
            orjson.loads(line)["value"] for line in path.read_bytes().splitlines() if line
        ]
    report = judge(LogTruth(clean_log(args.log)), outputs)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
