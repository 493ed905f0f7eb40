"""The worker's HTTP surface against real workers (issue 10, case 9, the HTTP part).

Faust's own views (``/``, ``/table/``, ``/router/``, ``/router/topics``) are off and answer a
JSON 404, as does any unknown path, a bad ``/router/...`` path included (it was a 500); errors
never carry a traceback. ``SHOPSCORE_HTTP_TOKEN`` guards ``/users/*`` with a bearer token, also
across workers (a request for a user another worker owns is forwarded with its headers), while
``/health`` and ``/metrics`` stay open. Binding a non-loopback address logs one warning.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web as aiohttp_web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.partitioner import murmur2

from stream.tools.broker import free_port
from stream.worker.web import _guard

TOKEN = "s3cret-token-\u00e9"  # not only ASCII: compared as UTF-8 bytes
NOW = int(time.time() * 1000) - 600_000


def _helpers() -> Any:
    spec = importlib.util.spec_from_file_location(
        "web_worker_ingest", Path(__file__).with_name("test_worker_ingest.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _helpers()


def _get(
    url: str, path: str, *, auth: str | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"{url}{path}", method=method)
    if auth is not None:
        request.add_header("Authorization", auth.encode("utf-8").decode("latin-1"))
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _json_error(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict:
    assert status == expected, (status, body[:300])
    assert headers.get("Content-Type", "").startswith("application/json"), headers
    assert b"Traceback" not in body and b'File "' not in body
    return json.loads(body)


def _log_of(users: list[str], tmp_path: Path) -> Path:
    log = tmp_path / "events.jsonl"
    lines = [
        {
            "type": "click",
            "event_id": f"{user}-1",
            "user_id": user,
            "ts": NOW + n,
            "item_id": "i1",
            "category": "books",
            "price": 9.5,
        }
        for n, user in enumerate(users)
    ]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return log


def _users_on_every_partition(partitions: int, per_partition: int = 2) -> list[str]:
    found: dict[int, list[str]] = {p: [] for p in range(partitions)}
    k = 0
    while any(len(v) < per_partition for v in found.values()):
        user = f"user{k:03d}"
        slot = found[(murmur2(user.encode()) & 0x7FFFFFFF) % partitions]
        if len(slot) < per_partition:
            slot.append(user)
        k += 1
    return [u for users in found.values() for u in users]


@pytest.mark.broker
def test_faust_views_are_off_errors_are_json_and_a_wildcard_bind_warns(
    settings, start_worker, tmp_path
) -> None:
    worker = start_worker(settings, web_host="0.0.0.0")
    for path in (
        "/",
        "/table/",
        "/table/users/",
        "/table/users/x/",
        "/router/",
        "/router/topics",
        "/router/x",
        "/router/x/",  # a table that does not exist: was a 500 with Faust's view
        "/router/users/u1/",
        "/graph/",
        "/assignment/",
        "/performance/",
        "/no/such/path",
    ):
        status, headers, body = _get(worker.url, path)
        error = _json_error(status, headers, body, 404)
        assert error == {"error": "not found", "status": 404}, path
        assert settings.app_id.encode() not in body and settings.topic_prefix.encode() not in body
    status, headers, body = _get(worker.url, "/health", method="POST")
    error = _json_error(status, headers, body, 405)
    assert error["status"] == 405 and "GET" in headers.get("Allow", "")
    # What stays: health, metrics and users, without a token when none is configured.
    status, _h, body = _get(worker.url, "/health")
    assert status == 200 and json.loads(body)["status"] == "ready"
    status, _h, body = _get(worker.url, "/metrics")
    assert status == 200 and b"shopscore_" in body
    status, headers, body = _get(worker.url, "/users/nobody")
    assert _json_error(status, headers, body, 404)["error"] == "unknown user"

    log = (tmp_path / "worker.log").read_text(errors="replace")
    warnings = [line for line in log.splitlines() if "not a loopback address" in line]
    assert len(warnings) == 1, warnings
    assert "WARNING" in warnings[0] and "0.0.0.0" in warnings[0]
    assert "SHOPSCORE_HTTP_TOKEN" in warnings[0]


@pytest.mark.broker
def test_the_token_guards_users_only_and_is_checked_exactly(
    settings, start_worker, wait, tmp_path
) -> None:
    worker = start_worker(settings, http_token=TOKEN)
    helpers.replay_cli(settings, _log_of(["u1"], tmp_path))
    good = f"Bearer {TOKEN}"
    wait(lambda: _get(worker.url, "/users/u1", auth=good)[0] == 200, 60, 0.5)
    status, _h, body = _get(worker.url, "/users/u1", auth=f"bearer {TOKEN}")  # scheme: any case
    assert status == 200 and json.loads(body)["user_id"] == "u1"
    for auth in (
        None,
        "Bearer",
        "Bearer ",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer wrong",
    ):
        for path in ("/users/u1", "/users/nobody", "/users/a/b", "/users"):
            status, headers, body = _get(worker.url, path, auth=auth)
            error = _json_error(status, headers, body, 401)
            assert error["status"] == 401 and b"u1" not in body, (auth, path)
            assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    # Probes and Prometheus need no token.
    assert _get(worker.url, "/health")[0] == 200
    status, _h, body = _get(worker.url, "/metrics")
    assert status == 200 and b"shopscore_" in body
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "not a loopback address" not in log  # 127.0.0.1: no warning


@pytest.mark.broker
def test_a_user_owned_by_the_other_worker_is_forwarded_with_the_token(
    settings, start_worker, wait, tmp_path
) -> None:
    users = _users_on_every_partition(settings.partitions)
    first = start_worker(settings, name="first", http_token=TOKEN)
    second = start_worker(settings, name="second", http_token=TOKEN, web_port=free_port())
    helpers.replay_cli(settings, _log_of(users, tmp_path))
    wait(lambda: all((w.health() or {}).get("assigned_partitions", 0) > 0 for w in (first, second)))
    good = f"Bearer {TOKEN}"

    def everyone_served_by_both() -> bool:
        return all(
            _get(w.url, f"/users/{user}", auth=good)[0] == 200
            for w in (first, second)
            for user in users
        )

    wait(everyone_served_by_both, 90, 1.0)  # each worker owns some partitions, not all
    for w in (first, second):
        for user in users:
            status, _h, body = _get(w.url, f"/users/{user}", auth=good)
            assert status == 200 and json.loads(body)["user_id"] == user
            status, headers, body = _get(w.url, f"/users/{user}")  # refused before forwarding
            _json_error(status, headers, body, 401)


# -- the middleware alone (no broker): what a failing view or a failed forward answers ------


async def _serve_failures(
    token: str | None, calls: list[tuple[str, str | None]]
) -> list[tuple[int, str, bytes]]:
    """Requests ``calls`` (path, Authorization) of an app with the worker's middleware."""

    async def crash(request: aiohttp_web.Request) -> aiohttp_web.Response:
        raise KeyError("secret internals")

    async def unreachable(request: aiohttp_web.Request) -> aiohttp_web.Response:
        raise aiohttp.ClientConnectionError("owner down")

    async def ok(request: aiohttp_web.Request) -> aiohttp_web.Response:
        return aiohttp_web.json_response({"ok": True})

    app = aiohttp_web.Application(middlewares=[_guard(token)])
    app.router.add_get("/crash", crash)
    app.router.add_get("/users/{user_id}", unreachable)
    app.router.add_get("/health", ok)
    results: list[tuple[int, str, bytes]] = []
    async with TestClient(TestServer(app)) as client:
        for path, auth in calls:
            headers = {"Authorization": auth} if auth else {}
            resp = await client.get(path, headers=headers)
            body = await resp.read()
            results.append((resp.status, resp.headers.get("Content-Type", ""), body))
    return results


def test_a_failing_view_answers_json_500_without_traceback_and_logs_one(caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="shopscore.web"):
        results = asyncio.run(_serve_failures(None, [("/crash", None)] * 5))
    assert [status for status, _c, _b in results] == [500] * 5
    for _status, content_type, body in results:
        assert content_type.startswith("application/json")
        assert json.loads(body) == {"error": "internal error", "status": 500}
        assert b"secret internals" not in body and b"Traceback" not in body
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1  # once a minute, not once a request


def test_a_failed_forward_answers_503_and_the_token_is_checked_before_forwarding() -> None:
    results = asyncio.run(
        _serve_failures(
            "t0k",
            [
                ("/users/u1", "Bearer t0k"),
                ("/users/u1", None),
                ("/users/u1", "Bearer t0"),
                ("/health", None),
            ],
        )
    )
    statuses = [status for status, _c, _b in results]
    assert statuses == [503, 401, 401, 200]
    assert json.loads(results[0][2])["status"] == 503
