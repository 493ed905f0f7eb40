"""Switching Faust's built-in web views off, which Faust has no setting for."""

from __future__ import annotations

from typing import Any

__all__ = ["FAUST_VIEWS_PREFIX", "drop_faust_views"]

#: Faust's own blueprints (index, tables, router, stats, graph, performance) live here.
FAUST_VIEWS_PREFIX = "faust.web.apps."


def drop_faust_views(web: Any) -> None:
    """Remove Faust's built-in blueprints before they are mounted (at server start): they
    read any table key over HTTP and list the cluster's topics and hosts (``stream.worker.web``)."""
    manager = web.blueprints
    if manager.applied:
        raise RuntimeError("register_views must run before the web server starts")
    manager._enabled = [
        (prefix, blueprint)
        for prefix, blueprint in manager._enabled
        if not (isinstance(blueprint, str) and blueprint.startswith(FAUST_VIEWS_PREFIX))
    ]
