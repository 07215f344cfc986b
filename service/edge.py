"""An ASGI middleware for Serve's own HTTP servers (the proxy, and a replica's direct ingress),
which runs before Serve reads the request.

Serve decodes the headers it interprets itself (the request id, session and model ids, the
request timeout) as UTF-8 and answers a plain-text 500 when one is not. This answers the
contract's `400 {"error": ...}` instead. Serve installs it from the environment variable
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=service.ingress_guard:middlewares`, which the
launcher, the Dockerfile and the README's cluster commands set for every Ray process.
"""

from __future__ import annotations

import json

from ray.serve._private.constants import (
    SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER,
    SERVE_HTTP_REQUEST_ID_HEADER,
    SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER,
    SERVE_MULTIPLEXED_MODEL_ID,
    SERVE_SESSION_ID,
)
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "service.ingress_guard:middlewares"


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
        name = undecodable_serve_header(scope["headers"]) if scope["type"] == "http" else None
        if name is None:
            await self._app(scope, receive, send)
            return
        body = json.dumps({"error": f"header {name} must be UTF-8 text"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def middlewares() -> list[Middleware]:
    """What Serve calls, by the import path in `CALLBACK_VARIABLE`."""
    return [Middleware(ServeHeaderGuard)]
