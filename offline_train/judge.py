"""Judging what a worker published against what the log's future says (online quality).

The scores are read back from the output topics (``shopscore dump``), the truth from the
event log that was replayed: a churn score is right when no order follows within its horizon,
an interest ranking when it holds the category of the user's next action, a recommendation
list when it holds items the user adds or buys within the recommendation window. Only
messages whose outcome the log can tell are judged (a churn horizon must end inside the log).

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

from offline_train.metrics import hit_rate_at_k, mrr, ndcg_at_k, recall_at_k, roc_auc
from offline_train.online_eval import clean_log
from stream.contract.events import CartChange, Click, Event, Order

__all__ = ["LogTruth", "judge"]

DAY_MS = 86_400_000


class LogTruth:
    """Per user, the orders, actions (with category) and items added/bought, by event time."""

    def __init__(self, events: Iterable[Event]) -> None:
        self.orders: dict[str, list[int]] = {}
        self.actions: dict[str, list[tuple[int, str]]] = {}
        self.items: dict[str, list[tuple[int, str]]] = {}
        self.end_ms = 0
        for e in events:
            self.end_ms = max(self.end_ms, e.ts)
            if isinstance(e, Order):
                self.orders.setdefault(e.user_id, []).append(e.ts)
                for line in e.items:
                    self.items.setdefault(e.user_id, []).append((e.ts, line.item_id))
                if e.items:
                    self.actions.setdefault(e.user_id, []).append((e.ts, e.items[0].category))
            elif isinstance(e, Click):
                self.actions.setdefault(e.user_id, []).append((e.ts, e.category))
            elif isinstance(e, CartChange) and e.action == "add":
                self.actions.setdefault(e.user_id, []).append((e.ts, e.category))
                self.items.setdefault(e.user_id, []).append((e.ts, e.item_id))
        for table in (self.orders, self.actions, self.items):
            for rows in table.values():
                rows.sort()

    def churned(self, user: str, ts: int, horizon_ms: int) -> bool | None:
        """No order in ``(ts, ts + horizon]``; None when the horizon ends after the log."""
        if ts + horizon_ms > self.end_ms:
            return None
        orders = self.orders.get(user, [])
        i = bisect.bisect_right(orders, ts)
        return not (i < len(orders) and orders[i] <= ts + horizon_ms)

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
    report: dict[str, Any] = {}
    ys, blended, onnx = [], [], []
    for value in outputs.get("scores.churn", ()):
        horizon = round(value["horizon_days"] * DAY_MS)
        y = truth.churned(value["user_id"], value["ts"], horizon)
        if y is None:
            continue
        ys.append(y)
        blended.append(value["churn_probability"])
        onnx.append(value.get("components", {}).get("onnx", value["churn_probability"]))
    y_arr = np.array(ys, bool)
    report["churn"] = {
        "judged": len(ys),
        "positive_rate": float(y_arr.mean()) if ys else None,
        "auc_published": roc_auc(y_arr, np.array(blended)) if ys else None,
        "auc_onnx_alone": roc_auc(y_arr, np.array(onnx)) if ys else None,
    }
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("dumps", type=Path, help="directory of TOPIC.jsonl files from dump")
    args = parser.parse_args(argv)
    outputs = {}
    for topic in ("scores.churn", "scores.interest", "recs.cart"):
        path = args.dumps / f"{topic}.jsonl"
        outputs[topic] = [
            orjson.loads(line)["value"] for line in path.read_bytes().splitlines() if line
        ]
    report = judge(LogTruth(clean_log(args.log)), outputs)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
