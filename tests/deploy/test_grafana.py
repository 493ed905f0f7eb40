"""deploy/grafana: provisioning files that fit together, and a dashboard whose every query runs
against a real Prometheus scraping a real worker, over metric names the worker exports."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "shopscore.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "shopscore.yml"
#: Panels fed by code that is not built yet say so in their description; they may be empty.
NOT_YET = ("Filled by the scoring agents", "Filled by the online learners")
#: What Grafana substitutes before a query reaches Prometheus ($instance = "All").
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$instance": ".*"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels inside collapsed rows
    return [p for p in out if p["type"] != "row"]


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def test_provisioning_fits_together() -> None:
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    board = dashboard()
    assert board["uid"] == "shopscore" and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["title"] and panel["description"], panel
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
            assert target["expr"].strip(), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    for variable in board["templating"]["list"]:
        assert variable["datasource"]["uid"] == datasource["uid"]
    titles = " ".join(p["title"].lower() for p in panels())
    for topic in ("consumed", "rejected", "latency", "lag", "quality", "drift", "users", "cpu"):
        assert topic in titles, topic  # the list: throughput ... resource use


def _exported_names(worker_url: str) -> set[str]:
    """Every metric name the worker's /metrics declares, sampled or not (a labelled family
    without children has a TYPE line and no samples)."""
    with urllib.request.urlopen(f"{worker_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.mark.broker
def test_every_dashboard_query_runs_against_prometheus(scraped: Any) -> None:
    prom = scraped.prometheus
    exported = _exported_names(scraped.worker.url)
    empty_panels = []
    for panel in panels():
        results = []
        for target in panel["targets"]:
            expr = grafana_to_promql(target["expr"])
            for name in re.findall(r"\b((?:shopscore|process)_[a-z0-9_]+)\b", expr):
                assert name in exported, f"{panel['title']}: {name} is not a metric the worker has"
            results.append(prom.query(expr))  # raises with Prometheus's error if invalid
        if not any(results) and not any(marker in panel["description"] for marker in NOT_YET):
            empty_panels.append(panel["title"])
    assert not empty_panels, f"panels without data after a replay: {empty_panels}"


@pytest.mark.broker
def test_the_worker_variable_lists_the_scraped_worker(scraped: Any) -> None:
    (variable,) = dashboard()["templating"]["list"]
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
    assert match, variable["query"]
    selector, label = match.groups()
    values = {r["metric"][label] for r in scraped.prometheus.query(selector)}
    assert values == {f"127.0.0.1:{scraped.settings.web_port}"}
