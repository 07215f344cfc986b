"""In-process ASGI for the edge and API tests: one GET, a stand-in for Serve, jobs to answer."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from core.clients import ApiKeys
from core.jobstore import open_store
from core.models import ImageOutcome, JobSubmission, Visit
from core.settings import Settings
from core.submission import SubmissionLimits
from service.app import ImageServiceAPI, api
from service.tracker_client import TrackerClient


async def call(
    app: Any, headers: list[tuple[bytes, bytes]] | None = None, path: str = "/", query: str = ""
) -> tuple[int, Any, Any]:
    """One GET to an ASGI app: status, headers, JSON body."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
        "headers": headers or [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
        "root_path": "",
    }  # fmt: skip
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            answer["body"] += message.get("body", b"")

    # Starlette raises a bug's exception again once it has sent the 500, for the server's log.
    with contextlib.suppress(Exception):
        await app(scope, receive, send)
    return answer["status"], answer["headers"], json.loads(answer["body"])


class App:
    """Stands for Serve behind the middleware: answers 299 and records that it was reached."""

    def __init__(self) -> None:
        self.reached: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.reached.append(scope)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def store_with_jobs(data_dir: Path, client: str | None = None) -> tuple[int, int]:
    """An ongoing job and a failed one, in the database the service keeps under `data_dir`."""
    store = open_store(Settings(data_dir=data_dir, database_url=""))
    submission = JobSubmission((Visit("S\u00e9", "2025-01-01", ("http://a.test/1",)),))
    ongoing, _ = store.create_job(submission, None, {}, client)
    failed, _ = store.create_job(submission, None, {}, client)
    store.save_outcomes([ImageOutcome(failed, 0, 1.0, error="HTTP 404")], [failed])
    store.close()
    return ongoing, failed


def request(
    app: Any,
    method: str,
    target: str,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One request to an ASGI app: status, raw headers in the order sent, body bytes."""
    path, _, query = target.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
        "headers": [(b"content-length", str(len(body)).encode()), *(headers or [])],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2), "root_path": "",
    }  # fmt: skip
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = list(message["headers"])
        else:
            answer["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return answer["status"], answer["headers"], answer["body"]


def answer_to(exc: Exception) -> tuple[int, str | None, Any]:
    """How the API answers a route that raised `exc`: status, Retry-After, body."""
    app = FastAPI()
    app.exception_handlers.update(api.exception_handlers)

    @app.get("/")
    async def route() -> None:
        raise exc

    status, headers, body = asyncio.run(call(app))
    return status, headers.get("retry-after"), body


def api_with(tracker: Any, settings: Settings | None = None, statuses: Any = None) -> Any:
    """The real API app, its Serve replica an ImageServiceAPI that asks `tracker` (and reads
    status from `statuses`, the database beside it, when given)."""
    settings = settings or Settings(data_dir=Path("/nonexistent"))
    # Serve wraps the class in a Deployment; its `func_or_class` is the class itself.
    instance = object.__new__(getattr(ImageServiceAPI, "func_or_class"))  # noqa: B009
    instance._settings = settings
    instance._limits = SubmissionLimits.from_settings(settings)
    instance._api_keys = ApiKeys(settings.api_keys)
    instance._statuses = statuses
    instance._tracker = TrackerClient(tracker, settings.tracker_timeout)
    [servable] = {
        inspect.signature(route.endpoint).parameters["self"].default.dependency
        for node in api.routes
        for route in getattr(getattr(node, "original_router", None), "routes", [])
    }
    api.dependency_overrides[servable] = lambda: instance
    return api


class ScriptedTracker:
    """A tracker's handle for in-process API tests: answers each method with what `answers`
    holds for it (an exception is raised), records the arguments it was called with, and
    fails the test on any other method."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        if name not in self.answers:
            raise AssertionError(f"the tracker was asked {name}")
        tracker = self

        class Method:
            def remote(self, *args: Any) -> Any:
                tracker.calls.append((name, args))

                async def answer() -> Any:
                    value = tracker.answers[name]
                    if isinstance(value, BaseException):
                        raise value
                    return value

                return answer()

        return Method()
