"""The request metrics middleware around plain ASGI apps, with a recorder that keeps what it is
told: routes, codes, a raising app, a client that goes away, a recorder that fails."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from harness.asgi import App, call, store_with_jobs
from service.edge import middlewares
from service.request_metrics import RequestMetrics, route_of

pytestmark = pytest.mark.timeout(30)


class Recorder:
    def __init__(self) -> None:
        self.answers: list[tuple[str, int, float]] = []

    def answered(self, route: str, code: int, seconds: float) -> None:
        self.answers.append((route, code, seconds))


def ticking() -> Any:
    """A clock that advances a second at each read."""
    return itertools.count().__next__


def answering(status: int) -> Any:
    async def app(_scope: Any, _receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def measured(app: Any) -> tuple[RequestMetrics, Recorder]:
    recorder = Recorder()
    return RequestMetrics(app, lambda: recorder, clock=ticking()), recorder


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/api/submit/", "/api/submit"),
        ("/api/submit", "/api/submit"),
        ("/api/status", "/api/status"),
        ("/api/results", "/api/results"),
        ("/api/jobs", "/api/jobs"),
        ("/api/jobs/17", "/api/jobs/{job_id}"),
        ("/api/jobs/not-a-number", "/api/jobs/{job_id}"),
        ("/api/jobs/17/cancel", "/api/jobs/{job_id}/cancel"),
        ("/healthz", "/healthz"),
        ("/api/status/", "other"),
        ("/api/jobs/", "other"),
        ("/api/jobs/17/cancel/now", "other"),
        ("/api/jobs//cancel", "other"),
        ("/docs", "other"),
        ("/", "other"),
        ("/wp-login.php?x=1", "other"),
        ("/api/submit/../../etc/passwd", "other"),
    ],
)
def test_a_path_maps_to_its_route_template_or_other(path: str, route: str) -> None:
    assert route_of(path) == route


@pytest.mark.parametrize("status", [200, 201, 400, 413, 429, 503])
def test_an_answer_is_counted_with_its_route_code_and_time(status: int) -> None:
    metrics, recorder = measured(answering(status))
    asyncio.run(call(metrics, path="/api/submit/"))
    assert recorder.answers == [("/api/submit", status, 1)]


def test_an_app_that_raises_before_answering_counts_as_a_500_and_still_raises() -> None:
    async def broken(_scope: Any, _receive: Any, _send: Any) -> None:
        raise RuntimeError("a bug")

    metrics, recorder = measured(broken)
    with pytest.raises(RuntimeError, match="a bug"):
        asyncio.run(metrics(scope("/api/results"), receive, discard))
    assert recorder.answers == [("/api/results", 500, 1)]


def test_an_app_that_raises_after_answering_counts_with_the_code_sent() -> None:
    async def half(_scope: Any, _receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("the body failed")

    metrics, recorder = measured(half)
    with pytest.raises(RuntimeError):
        asyncio.run(metrics(scope("/api/results"), receive, discard))
    assert recorder.answers == [("/api/results", 200, 1)]


def test_a_client_that_goes_away_mid_request_is_counted_as_a_499_not_a_500() -> None:
    """The server cancels the app's task when its client disconnects."""
    started = asyncio.Event()

    async def slow(_scope: Any, _receive: Any, _send: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    metrics, recorder = measured(slow)

    async def scenario() -> None:
        task = asyncio.create_task(metrics(scope("/api/status"), receive, discard))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert recorder.answers == [("/api/status", 499, 1)]


def test_a_send_that_fails_because_the_client_left_is_counted_and_raised() -> None:
    async def closed(_message: Any) -> None:
        raise OSError("connection reset")

    metrics, recorder = measured(answering(200))
    with pytest.raises(OSError):
        asyncio.run(metrics(scope("/api/status"), receive, closed))
    assert recorder.answers == [("/api/status", 200, 1)]


def test_a_recorder_that_fails_never_breaks_the_request(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def answered(self, *_args: Any) -> None:
            raise ValueError("metrics agent gone")

    metrics = RequestMetrics(answering(201), lambda: Broken())
    for _ in range(3):
        assert asyncio.run(call(metrics, path="/api/submit"))[0] == 201
    assert [r.message for r in caplog.records if r.levelname == "ERROR"] == [
        "recording an HTTP request's metrics failed; requests go on"
    ]


def test_lifespan_and_websocket_scopes_pass_uncounted() -> None:
    reached: list[str] = []

    async def app(scope: Any, _receive: Any, _send: Any) -> None:
        reached.append(scope["type"])

    metrics, recorder = measured(app)
    asyncio.run(metrics({"type": "lifespan"}, receive, discard))
    asyncio.run(metrics({"type": "websocket", "path": "/api/status"}, receive, discard))
    assert (reached, recorder.answers) == (["lifespan", "websocket"], [])


def test_the_metrics_are_outermost_and_count_the_edge_s_own_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrapped as Serve wraps them: the status answered at the edge and the header guard's 400
    never reach Serve, and are counted all the same."""
    from ray.serve._private.http_util import _apply_middlewares

    ongoing, _ = store_with_jobs(tmp_path)
    monkeypatch.setenv("IMAGE_SERVICE_DATA_DIR", str(tmp_path))
    recorder = Recorder()
    stack = middlewares()
    assert stack[-1].cls is RequestMetrics
    stack[-1].kwargs["recorder"] = lambda: recorder
    serve = App()
    proxy = _apply_middlewares(serve, stack)
    asyncio.run(call(proxy, path="/api/status", query=f"jobid={ongoing}"))
    asyncio.run(call(proxy, [(b"x-request-id", b"\xff")], path="/api/status", query="jobid=1"))
    asyncio.run(call(proxy, path="/api/jobs/9"))
    assert [(route, code) for route, code, _ in recorder.answers] == [
        ("/api/status", 200),
        ("/api/status", 400),
        ("/api/jobs/{job_id}", 299),
    ]
    assert len(serve.reached) == 1


def scope(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def discard(_message: MutableMapping[str, Any]) -> None:
    pass
