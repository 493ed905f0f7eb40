"""The worker's HTTP surface: ``/health``, ``/users/{user_id}`` and ``/metrics`` (Faust's web).

Kept apart from the agent so what the worker exposes to the network is one small module, and
nothing else is exposed:

- Faust's built-in views are off: ``/`` (its index), ``/table/...`` (reads any table key over
  HTTP), ``/router/...`` and ``/router/topics`` (topic names and the host map of the cluster).
  ``@app.table_route`` does not need them: it asks the partition assignor directly.
- Every error is a small JSON body ``{"error": ..., "status": ...}``, whatever the path
  (unknown paths 404, wrong methods 405, a failing view 500), never a traceback.
- ``SHOPSCORE_HTTP_TOKEN`` set: ``/users/*`` needs ``Authorization: Bearer <token>`` (401
  otherwise, compared in constant time). A request for a user owned by another worker is
  forwarded there by Faust with its headers, so the owner checks the same token again.
  ``/health`` and ``/metrics`` stay open (probes and Prometheus).
- Binding an address that is not loopback logs one warning at start-up.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web as aiohttp_web

from stream.features import UserState, describe
from stream.kafka.faust_web import drop_faust_views

if TYPE_CHECKING:
    from stream.worker.app import ShopscoreApp

__all__ = ["is_loopback", "register_views"]

log = logging.getLogger("shopscore.web")

#: Paths that need the bearer token when one is configured.
PROTECTED_PREFIX = "/users"

#: A failing view's traceback is logged at most this often (the errors are all answered).
TRACEBACK_EVERY_S = 60.0

_Handler = Callable[[aiohttp_web.Request], Awaitable[aiohttp_web.StreamResponse]]


def register_views(worker: ShopscoreApp) -> None:
    """Register the worker's views on its Faust app, switch Faust's own views off, install
    the JSON-errors and bearer-token middleware, and the non-loopback warning. Must run before
    the web server starts (``ShopscoreApp.__init__``)."""
    app = worker.app
    users = worker.users
    settings = worker.settings
    drop_faust_views(app.web)
    app.web.web_app.middlewares.append(_guard(settings.http_token))
    _warn_if_exposed(app, settings.web_host, settings.web_port, bool(settings.http_token))

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        ok, detail = worker.ready()
        detail["status"] = "ready" if ok else "starting"
        return web.json(detail, status=200 if ok else 503)

    @app.page("/users/{user_id}")
    @app.table_route(table=users, match_info="user_id")
    async def user_view(web: Any, request: Any, user_id: str) -> Any:
        state: UserState | None = worker.user_states.get(user_id.encode())
        if state is None:
            return web.json({"error": "unknown user", "user_id": user_id}, status=404)
        body = describe(state, worker.clock_ms(), worker.features)
        scores = worker.user_scores(user_id).latest
        return web.json({"user_id": user_id, **body, "scores": scores})


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only.

    >>> [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::", "10.0.0.5")]
    [True, True, True, False, False, False]
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name (may resolve to anything) or a wildcard ("")
        return False


def _warn_if_exposed(app: Any, host: str, port: int, token: bool) -> None:
    if is_loopback(host):
        return

    @app.task
    async def warn_exposed() -> None:
        if token:
            log.warning(
                "the HTTP server listens on %s:%d, not a loopback address: /users/* requires "
                "the bearer token (SHOPSCORE_HTTP_TOKEN), which travels in clear text (no "
                "TLS); /health and /metrics are open to anyone who can reach the port",
                host,
                port,
            )
        else:
            log.warning(
                "the HTTP server listens on %s:%d, not a loopback address, without "
                "authentication: anyone who can reach the port reads users' carts and recent "
                "items at /users/{user_id}; set SHOPSCORE_HTTP_TOKEN to require a bearer "
                "token, or bind 127.0.0.1 (SHOPSCORE_WEB_HOST)",
                host,
                port,
            )


def _authorized(request: aiohttp_web.Request, expected: bytes) -> bool:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    presented = credentials.strip().encode("utf-8", "surrogateescape")
    # Compared whatever the scheme, so the answer's timing says nothing about the token.
    same = hmac.compare_digest(presented, expected)
    return same and scheme.lower() == "bearer"


def _error(status: int, error: str, **headers: str) -> aiohttp_web.Response:
    return aiohttp_web.json_response(
        {"error": error, "status": status}, status=status, headers=headers or None
    )


def _guard(token: str | None) -> Any:
    """The middleware every request passes: the token check, then JSON errors."""
    expected = token.encode("utf-8") if token else None
    last_traceback: list[float] = []

    @aiohttp_web.middleware
    async def guard(request: aiohttp_web.Request, handler: _Handler) -> aiohttp_web.StreamResponse:
        path = request.path
        if (
            expected is not None
            and (path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/"))
            and not _authorized(request, expected)
        ):
            return _error(
                401,
                "unauthorized: send Authorization: Bearer <SHOPSCORE_HTTP_TOKEN>",
                **{"WWW-Authenticate": 'Bearer realm="shopscore"'},
            )
        try:
            return await handler(request)
        except aiohttp_web.HTTPException as exc:
            if exc.status < 400:  # a redirect: not an error
                raise
            allow = exc.headers.get("Allow")
            reason = (exc.reason or "error").lower()
            return _error(exc.status, reason, **({"Allow": allow} if allow else {}))
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            # Forwarding to the worker that owns the key failed (``@app.table_route``).
            log.warning("forwarding %s to its owner failed: %s", path[:200], type(exc).__name__)
            return _error(503, "the worker owning this key is unreachable; retry")
        except Exception:
            now = time.monotonic()
            if not last_traceback or now - last_traceback[0] >= TRACEBACK_EVERY_S:
                last_traceback[:] = [now]
                log.exception(
                    "HTTP %s %s failed (traceback at most once a minute)",
                    request.method,
                    path[:200],
                )
            return _error(500, "internal error")

    return guard
