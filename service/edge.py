"""ASGI middlewares for Serve's own HTTP servers (the proxy, and a replica's direct ingress),
which run before Serve reads the request. Serve installs them from the environment variable
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=service.edge:middlewares`, which the launcher, the
Dockerfile and the README's cluster commands set for every Ray process.

- `RequestMetrics` (`service.request_metrics`): every request counted and timed, outermost.
- `ServeHeaderGuard`: Serve decodes the headers it interprets itself (the request id, session
  and model ids, the request timeout) as UTF-8 and answers a plain-text 500 when one is not;
  this answers the contract's `400 {"error": ...}` instead.
- `FastStatus`: `GET /api/status` of a known job, answered where HTTP ends from the job
  database beside it, without the hop into Serve's request handling: the poll clients make
  most, at a fraction of the CPU. Anything else (an unknown job, a bad key, no database on
  this node) goes on to the API as before. A database that does not answer is answered here,
  `503` with Retry-After within the store's deadline: the API would ask it again.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from ray.serve._private.constants import (
    SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER,
    SERVE_HTTP_REQUEST_ID_HEADER,
    SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER,
    SERVE_MULTIPLEXED_MODEL_ID,
    SERVE_SESSION_ID,
)
from ray.serve._private.http_util import RequestIdMiddleware
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.clients import ApiKeys
from core.errors import DatabaseUnavailable, StorageError
from core.models import status_payload
from core.settings import Settings
from service.errors import STORE_NOT_ANSWERING, UNAVAILABLE_RETRY_AFTER_SECONDS
from service.params import parse_job_id
from service.request_metrics import RequestMetrics
from service.status_source import StatusSource

CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "service.edge:middlewares"
# As the API answers when the job store does not answer.
RETRY_AFTER = str(UNAVAILABLE_RETRY_AFTER_SECONDS).encode()


def _normal(name: str) -> str:
    # Serve matches these names case-blind and with `-` and `_` alike.
    return name.lower().replace("-", "_")


SERVE_HEADERS = frozenset(
    _normal(name)
    for name in (
        SERVE_HTTP_REQUEST_ID_HEADER,
        SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER,
        SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER,
        SERVE_MULTIPLEXED_MODEL_ID,
        SERVE_SESSION_ID,
    )
)


def undecodable_serve_header(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The name of the first header Serve reads whose value is not UTF-8, if any."""
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1")
        if _normal(name) in SERVE_HEADERS:
            try:
                raw_value.decode("utf-8")
            except UnicodeDecodeError:
                return name
    return None


class ServeHeaderGuard:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        name = undecodable_serve_header(scope["headers"])
        if name is None:
            await self._app(scope, receive, ServeErrorsAsJson(send))
            return
        await send_json(send, 400, {"error": f"header {name} must be UTF-8 text"})


class ServeErrorsAsJson:
    """A `send` that gives the errors Serve answers itself (its queue full: 503; a request
    timed out: 408; a replica lost: 500) the contract's shape, `{"error": message}`, keeping
    their status and Retry-After. The API's own answers are JSON already and pass as they are."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._start: Message | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            headers = dict(message.get("headers", ()))
            if headers.get(b"content-type", b"").startswith(b"text/plain"):
                self._start = message
                return
        if self._start is not None and message["type"] == "http.response.body":
            # Serve's error answers come whole, in one body message.
            text = bytes(message.get("body", b"")).decode("utf-8", "replace").strip()
            extra = [(k, v) for k, v in self._start["headers"] if k.lower() == b"retry-after"]
            await send_json(self._send, self._start["status"], {"error": text}, extra)
            return
        await self._send(message)


async def send_json(
    send: Send, status: int, answer: object, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    # Byte for byte what the API sends, its headers in the same order: a client cannot tell
    # which of the two answered its poll.
    body = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class FastStatus:
    """Settings come from this process's environment, that of `ray start`: the proxy does not
    get an application's runtime_env. So it answers only a job whose owner matches what it
    sees (no owner when it sees no API keys), and leaves any other to the API."""

    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        self._app = app
        self._settings = settings or Settings.from_env()
        self._keys = ApiKeys(self._settings.api_keys)
        self._statuses = StatusSource(self._settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, answer = 200, None
        if scope["type"] == "http":
            try:
                answer = await self._answer(scope)
            except DatabaseUnavailable:
                status, answer = 503, {"error": STORE_NOT_ANSWERING}
        if answer is None:
            await self._app(scope, receive, send)
            return

        async def respond(_scope: Scope, _receive: Receive, send: Send) -> None:
            headers = [(b"retry-after", RETRY_AFTER)] if status == 503 else []
            await send_json(send, status, answer, headers)

        # Through Serve's own middleware, so X-Request-ID is echoed or made as for any answer.
        await RequestIdMiddleware(respond)(scope, receive, send)

    async def _answer(self, scope: Scope) -> dict[str, object] | None:
        """The status body of a known job this caller may see; None to leave it to the API."""
        if scope["method"] != "GET" or scope["path"] != "/api/status":
            return None
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        jobids = [value for name, value in query if name == "jobid"]
        job_id = parse_job_id(jobids[0]) if len(jobids) == 1 else None
        if job_id is None:
            return None
        client = None
        if self._keys.required:
            keys = [v for k, v in scope["headers"] if k == b"authorization"]
            client = self._keys.client_for(keys[0].decode("latin-1")) if len(keys) == 1 else None
            if client is None:
                return None
        try:
            view = await self._statuses.job_view(job_id, client, exact=True)
        except DatabaseUnavailable:
            raise
        except StorageError:  # no job store on this node
            return None
        return None if view is None else status_payload(view)


def middlewares() -> list[Middleware]:
    """What Serve calls, by the import path in `CALLBACK_VARIABLE`, innermost first (Serve
    wraps them in this order): the request metrics run first and see every answer, the
    header guard's and the status answered here included; then the header guard."""
    return [Middleware(FastStatus), Middleware(ServeHeaderGuard), Middleware(RequestMetrics)]
