"""Every HTTP request the service answers, counted by route and status code and timed, in the
outermost ASGI middleware Serve runs in its HTTP servers (`service.edge.middlewares`): so the
answers given before Serve's request handling (status at the edge, the header guard's 400s)
count too, which Serve's own `ray_serve_num_http_requests_total` never sees.

Labels stay bounded: a route is one of the API's route templates or `other`, never a path."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Callable
from typing import Protocol

from ray.util.metrics import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

OTHER = "other"
CLIENT_CLOSED_REQUEST = 499
SERVER_ERROR = 500
# The routes of `service.app`, by path: `/api/submit/` is the documented one, `/api/submit`
# the same handler without the slash.
EXACT_ROUTES = {
    "/api/submit/": "/api/submit",
    "/api/submit": "/api/submit",
    "/api/status": "/api/status",
    "/api/results": "/api/results",
    "/api/jobs": "/api/jobs",
    "/healthz": "/healthz",
}
JOB_ROUTE = re.compile(r"/api/jobs/[^/]+")
CANCEL_ROUTE = re.compile(r"/api/jobs/[^/]+/cancel")
# A status answered at the edge takes well under a millisecond; a large submission, seconds.
REQUEST_BOUNDARIES = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                      2.5, 5.0, 10.0, 30.0]  # fmt: skip


def route_of(path: str) -> str:
    """The API's route template that `path` names, or `other`."""
    exact = EXACT_ROUTES.get(path)
    if exact is not None:
        return exact
    if JOB_ROUTE.fullmatch(path):
        return "/api/jobs/{job_id}"
    if CANCEL_ROUTE.fullmatch(path):
        return "/api/jobs/{job_id}/cancel"
    return OTHER


class RequestRecorder(Protocol):
    def answered(self, route: str, code: int, seconds: float) -> None:
        """One request answered on `route` with status `code`, `seconds` after it began."""


class RayRequestRecorder:
    """The two series on Ray's metrics system."""

    def __init__(self) -> None:
        self._requests = Counter(
            "image_service_http_requests",
            description="HTTP requests answered, by route template and status code.",
            tag_keys=("route", "code"),
        )
        self._seconds = Histogram(
            "image_service_http_request_seconds",
            description="Time from a request's start to the end of its response, by route.",
            boundaries=REQUEST_BOUNDARIES,
            tag_keys=("route",),
        )

    def answered(self, route: str, code: int, seconds: float) -> None:
        self._requests.inc(tags={"route": route, "code": str(code)})
        self._seconds.observe(seconds, tags={"route": route})


@functools.cache
def process_recorder() -> RequestRecorder:
    """The process's one recorder, made at the first request: Serve may build the middleware
    more than once in a process (its proxy, a replica's direct ingress), and a metric is
    registered once."""
    return RayRequestRecorder()


class RequestMetrics:
    """Counts and times every HTTP request that passes through it. A request that ends
    without a response started counts as a 500 when the app raised, and as 499 (nginx's "client
    closed request") when it was cancelled because its client went away: a client's short
    timeout is not the service's error, and must not page anyone through the 5xx alert.
    Recording never breaks a request: a recorder that fails is logged, once."""

    def __init__(
        self,
        app: ASGIApp,
        recorder: Callable[[], RequestRecorder] = process_recorder,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._app = app
        self._recorder = recorder
        self._clock = clock
        self._failed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        start = self._clock()
        code: int | None = None

        async def sending(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, sending)
        except asyncio.CancelledError:
            code = CLIENT_CLOSED_REQUEST if code is None else code
            raise
        finally:
            answered = SERVER_ERROR if code is None else code
            self._record(route_of(scope["path"]), answered, self._clock() - start)

    def _record(self, route: str, code: int, seconds: float) -> None:
        try:
            self._recorder().answered(route, code, seconds)
        except Exception:
            # A metric is not worth a request: say so once, and answer on.
            if not self._failed:
                self._failed = True
                log.exception("recording an HTTP request's metrics failed; requests go on")
