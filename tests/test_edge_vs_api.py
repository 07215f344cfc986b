"""`service.edge.FastStatus` against the API route `status` (service/app.py): every answer the
edge gives itself is the one the API gives to the same request. The API runs in process, its
real FastAPI routes and exception handlers, with the Serve instance injected."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from ray.serve._private.http_util import _apply_middlewares

from core.clients import client_id_for_key
from core.jobstore.sqlite.store import SqliteStore
from core.models import ImageOutcome, JobSubmission, Visit
from core.settings import Settings
from harness.asgi import App, ScriptedTracker, api_with, call, request, store_with_jobs
from service.app import api
from service.edge import FastStatus, middlewares
from service.status_source import StatusSource

pytestmark = pytest.mark.timeout(30)


def _status_route() -> Any:
    for node in api.routes:
        for route in getattr(getattr(node, "original_router", None), "routes", []):
            if getattr(route, "path", None) == "/api/status":
                return route
    raise AssertionError("no /api/status route")


def api_for(settings: Settings) -> Any:
    """The real API app, its Serve replica an ImageServiceAPI beside the database."""
    return api_with(ScriptedTracker(), settings, StatusSource(settings))


@pytest.fixture(autouse=True)
def _no_overrides_left() -> Any:
    yield
    api.dependency_overrides.clear()


def status(app: Any, query: str, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    return asyncio.run(call(app, headers, path="/api/status", query=query))


@pytest.mark.parametrize("keys", [(), ("key-a",)])
@pytest.mark.parametrize("tail", ["&jobid=", "&jobid"])
def test_a_blank_last_jobid_is_left_to_the_api(
    tmp_path: Path, keys: tuple[str, ...], tail: str
) -> None:
    """`jobid=1&jobid=`: Starlette keeps blank values and FastAPI takes the last one, so the API
    answers 400 {}; the edge must not answer job 1's status."""
    ongoing, _ = store_with_jobs(tmp_path, client_id_for_key("key-a") if keys else None)
    settings = Settings(data_dir=tmp_path, api_keys=keys)
    headers = [(b"authorization", b"Bearer key-a")] if keys else []
    query = f"jobid={ongoing}{tail}"
    from_api = status(api_for(settings), query, headers)
    assert from_api[0] == 400 and from_api[2] == {}
    serve = App()
    from_edge = status(FastStatus(serve, settings), query, headers)
    assert from_edge[0] == 299 or from_edge == from_api, (from_edge, from_api)


def test_the_edge_answer_carries_serve_s_request_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serve wraps its proxy app as `_apply_middlewares` does: RequestIdMiddleware innermost,
    ours outside it. Every answer through Serve carries X-Request-ID (the client's own, echoed),
    the edge's too."""
    ongoing, _ = store_with_jobs(tmp_path)
    monkeypatch.setenv("IMAGE_SERVICE_DATA_DIR", str(tmp_path))
    proxy = _apply_middlewares(App(), middlewares())
    sent = [(b"x-request-id", b"abc")]
    passed_on = asyncio.run(call(proxy, sent, path="/api/status", query="jobid=999"))
    assert passed_on[1].get("x-request-id") == "abc"  # what Serve sends for anything else
    answered = asyncio.run(call(proxy, sent, path="/api/status", query=f"jobid={ongoing}"))
    assert answered[0] == 200
    assert answered[1].get("x-request-id") == "abc", answered[1]


def test_api_keys_the_edge_does_not_see_never_open_a_job_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys set only in an application's runtime_env reach the replica, not Serve's proxy, where
    FastStatus reads `Settings.from_env()`. The API answers a caller without a key 401; the
    edge, seeing no keys, must not answer a job that has an owner."""
    owner = client_id_for_key("key-a")
    ongoing, _ = store_with_jobs(tmp_path, owner)
    ray_start_env = {"IMAGE_SERVICE_DATA_DIR": str(tmp_path)}  # the proxy's environment
    runtime_env_vars = {"IMAGE_SERVICE_API_KEYS": "key-a"}  # the application's, replica only
    for name in [n for n in os.environ if n.startswith("IMAGE_SERVICE_")]:
        monkeypatch.delenv(name)
    for name, value in ray_start_env.items():
        monkeypatch.setenv(name, value)
    from_api = status(
        api_for(Settings.from_env({**ray_start_env, **runtime_env_vars})), f"jobid={ongoing}"
    )
    assert from_api[0] == 401
    edge = FastStatus(App())  # as Serve builds it in its proxy
    from_edge = status(edge, f"jobid={ongoing}")
    assert from_edge[0] == 299 or from_edge == from_api, from_edge


def test_the_edge_answers_a_known_job_byte_for_byte_as_the_api(tmp_path: Path) -> None:
    """The API's answer is its response model; the edge sends `status_payload` as JSON itself.
    Bytes and headers must be the same (the edge adds only Serve's X-Request-ID)."""
    ongoing, failed = store_with_jobs(tmp_path)
    store = SqliteStore(Settings(data_dir=tmp_path).database_path)
    completed, _ = store.create_job(
        JobSubmission((Visit("S1", "2025-01-01", ("http://a.test/1",)),)), None, {}
    )
    store.save_outcomes([ImageOutcome(completed, 0, 1.0, width=2, height=3)], [completed])
    store.close()
    settings = Settings(data_dir=tmp_path)
    for job_id in (ongoing, failed, completed):
        target = f"/api/status?jobid={job_id}"
        from_api = request(api_for(settings), "GET", target)
        status, headers, body = request(FastStatus(App(), settings), "GET", target)
        assert [name for name, _ in headers][-1] == b"x-request-id"
        assert (status, headers[:-1], body) == from_api
        assert from_api[0] == 200 and f'"job_id":{job_id}'.encode() in from_api[2]
