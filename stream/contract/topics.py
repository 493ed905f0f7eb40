"""Contract topic names, without the deployment's prefix (``Settings.topic`` adds it)."""

from __future__ import annotations

from stream.contract.events import INPUT_TOPICS

__all__ = ["ALL_TOPICS", "CLOCK", "DLQ", "INPUT_TOPICS", "OUTPUT_TOPICS"]

DLQ = "events.dlq"
#: Control topic: ``{"ts": T}`` advances event time for idle users (docs/contracts.md, "Clock").
CLOCK = "clock"
OUTPUT_TOPICS: tuple[str, ...] = (
    "scores.interest",
    "scores.churn",
    "scores.purchase_power",
    "recs.cart",
    "offers",
)
ALL_TOPICS: tuple[str, ...] = (*INPUT_TOPICS, CLOCK, *OUTPUT_TOPICS, DLQ)
