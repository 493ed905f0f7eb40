"""The worker's HTTP surface: ``/health``, ``/users/{user_id}`` and ``/metrics`` (Faust's web).

Kept apart from the agent so what the worker exposes to the network is one small module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stream.features import UserState, describe

if TYPE_CHECKING:
    from stream.app import ShopscoreApp

__all__ = ["register_views"]


def register_views(worker: ShopscoreApp) -> None:
    """Register the worker's views on its Faust app."""
    app = worker.app
    users = worker.users

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        ok, detail = worker.ready()
        detail["status"] = "ready" if ok else "starting"
        return web.json(detail, status=200 if ok else 503)

    @app.page("/users/{user_id}")
    @app.table_route(table=users, match_info="user_id")
    async def user_view(web: Any, request: Any, user_id: str) -> Any:
        state: UserState | None = users.get(user_id.encode())
        if state is None:
            return web.json({"error": "unknown user", "user_id": user_id}, status=404)
        body = describe(state, worker.clock_ms(), worker.features)
        scores = worker.serving.user_scores(user_id).latest
        return web.json({"user_id": user_id, **body, "scores": scores})
