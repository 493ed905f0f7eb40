"""The output topics' message contracts, as a checker downstream consumers and tests share.

>>> problems("scores.churn", {"user_id": "u1", "ts": 1, "trigger": "e1",
...     "models": {"onnx": "v1"}, "churn_probability": 0.2, "horizon_days": 30.0,
...     "p_alive": 0.9, "horizons": {"30d": 0.2, "90d": 0.1}})
[]
>>> problems("scores.churn", {"user_id": "u1", "ts": 1, "trigger": "e1", "models": {},
...     "churn_probability": 1.5, "horizon_days": 30, "p_alive": None,
...     "horizons": {"30d": 0.2, "90d": 0.3}})  # doctest: +NORMALIZE_WHITESPACE
['models.onnx None does not name the ONNX model version', 'churn_probability 1.5 outside 0..1',
 'horizons is not {horizon: probability or null} falling with the horizon']
"""

from __future__ import annotations

import itertools
from typing import Any

from stream.setting_values import parse_duration_ms

__all__ = ["problems"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _probability(value: Any) -> bool:
    return _number(value) and 0.0 <= value <= 1.0


_TOPICS = ("scores.churn", "scores.interest", "scores.purchase_power", "recs.cart", "offers")


def _onnx_versions(topic: str, onnx: Any) -> bool:
    """Every message names the ONNX version(s) behind it: one string, or for ``offers`` (whose
    context is the churn and purchase-power scores) ``{"churn": v, "purchase_power": v}``."""
    if topic == "offers":
        return (
            isinstance(onnx, dict)
            and set(onnx) == {"churn", "purchase_power"}
            and all(isinstance(v, str) and v for v in onnx.values())
        )
    return isinstance(onnx, str) and bool(onnx)


def _horizons(value: Any) -> bool:
    """``{"30d": p, "90d": p, ...}``: durations to probabilities or null, and a longer horizon
    never with the higher churn (no order within 90 days implies none within 30)."""
    if not isinstance(value, dict) or not value:
        return False
    try:
        spans = {parse_duration_ms(label): p for label, p in value.items()}
    except (TypeError, ValueError):
        return False
    known = [spans[span] for span in sorted(spans) if spans[span] is not None]
    return all(_probability(p) for p in known) and all(
        later <= earlier + 1e-9 for earlier, later in itertools.pairwise(known)
    )


def problems(topic: str, value: Any) -> list[str]:
    """What is wrong with ``value`` as a message of ``topic`` (empty when it conforms)."""
    if not isinstance(value, dict):
        return ["not a JSON object"]
    out: list[str] = []
    if not isinstance(value.get("user_id"), str) or not value["user_id"]:
        out.append("user_id missing")
    if not isinstance(value.get("ts"), int) or isinstance(value.get("ts"), bool):
        out.append("ts is not an integer (epoch ms)")
    if not isinstance(value.get("trigger"), str) or not value["trigger"]:
        out.append("trigger missing")
    models = value.get("models")
    if not isinstance(models, dict):
        out.append("models missing")
    elif topic in _TOPICS and not _onnx_versions(topic, models.get("onnx")):
        out.append(f"models.onnx {models.get('onnx')!r} does not name the ONNX model version")
    if topic == "scores.churn":
        if not _probability(value.get("churn_probability")):
            out.append(f"churn_probability {value.get('churn_probability')!r} outside 0..1")
        if not _number(value.get("horizon_days")) or value["horizon_days"] <= 0:
            out.append("horizon_days missing")
        if value.get("p_alive", "missing") is not None and not _probability(value.get("p_alive")):
            out.append(f"p_alive {value.get('p_alive')!r} is neither null nor a probability")
        if not _horizons(value.get("horizons")):
            out.append("horizons is not {horizon: probability or null} falling with the horizon")
        components = value.get("components")
        btyd = components.get("btyd") if isinstance(components, dict) else None
        if btyd is not None and not (
            isinstance(btyd, dict)
            and _probability(btyd.get("p_alive"))
            and isinstance(btyd.get("churn"), dict)
            and btyd["churn"]
            and all(isinstance(k, str) and _probability(p) for k, p in btyd["churn"].items())
        ):
            out.append("components.btyd is neither null nor {p_alive, churn: {horizon: p}}")
    elif topic == "scores.interest":
        top = value.get("top_categories")
        if not isinstance(top, list) or not all(
            isinstance(c, dict) and isinstance(c.get("category"), str) and _probability(c.get("p"))
            for c in top
        ):
            out.append("top_categories is not a list of {category, p}")
    elif topic == "scores.purchase_power":
        spend = value.get("expected_spend_30d")
        if not _number(spend) or spend < 0:
            out.append(f"expected_spend_30d {spend!r} is not a non-negative number")
        if value.get("tier") not in ("low", "mid", "high", "top"):
            out.append(f"tier {value.get('tier')!r} unknown")
        for name in ("expected_orders", "clv"):
            figure = value.get(name, "missing")
            if figure is not None and not (_number(figure) and figure >= 0):
                out.append(f"{name} {figure!r} is neither null nor a non-negative number")
        if not _number(value.get("clv_days")) or value["clv_days"] <= 0:
            out.append("clv_days missing")
    elif topic == "recs.cart":
        items = value.get("items")
        if (
            not isinstance(items, list)
            or not items
            or not all(
                isinstance(i, dict)
                and isinstance(i.get("item_id"), str)
                and _number(i.get("score"))
                for i in items
            )
        ):
            out.append("items is not a non-empty list of {item_id, score}")
    elif topic == "offers":
        offer = value.get("offer")
        if offer is not None and not (isinstance(offer, dict) and isinstance(offer.get("id"), str)):
            out.append("offer is neither null nor an object with an id")
        if not _probability(value.get("propensity")) or value["propensity"] <= 0:
            out.append(f"propensity {value.get('propensity')!r} outside (0, 1]")
    else:
        out.append(f"unknown output topic {topic!r}")
    return out
