"""The middlewares Serve runs in its HTTP servers before it reads a request, in process:
the guard on Serve's own headers, and status answered from the database beside it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import JSONResponse

from core.clients import client_id_for_key
from core.errors import DatabaseUnavailable
from core.jobstore.postgres import reader as pg_reader
from core.jobstore.postgres.connection import PostgresConnections
from core.jobstore.postgres.store import PostgresStore
from core.settings import Settings
from harness.asgi import App, call, store_with_jobs
from service import status_source
from service.edge import FastStatus, ServeHeaderGuard


def get(app: Any, target: str, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    path, _, query = target.partition("?")
    return asyncio.run(call(app, headers, path=path, query=query))


@pytest.mark.parametrize(
    "name", [b"X-Request-ID", b"x-session-id", b"X-Request-Timeout-Seconds",
             b"x-request-disconnect-disabled", b"Serve-Multiplexed-Model-Id"],
)  # fmt: skip
def test_a_serve_header_that_is_not_utf8_is_a_400_before_serve_reads_it(name: bytes) -> None:
    serve = App()
    status, _headers, body = asyncio.run(call(ServeHeaderGuard(serve), [(name, b"\xff\xfe")]))
    assert (status, body, serve.reached) == (
        400, {"error": f"header {name.decode()} must be UTF-8 text"}, []
    )  # fmt: skip


def test_other_headers_pass_the_header_guard_untouched() -> None:
    serve = App()
    headers = [(b"x-request-id", b"abc"), (b"authorization", b"Bearer \xff")]
    assert asyncio.run(call(ServeHeaderGuard(serve), headers))[0] == 299
    assert [scope["headers"] for scope in serve.reached] == [headers]


def test_status_of_a_known_job_is_answered_byte_for_byte_without_serve(tmp_path: Path) -> None:
    ongoing, failed = store_with_jobs(tmp_path)
    serve = App()
    edge = FastStatus(serve, Settings(data_dir=tmp_path))
    for job_id, expected in (
        (ongoing, {"status": "ongoing", "job_id": ongoing}),
        (failed, {"status": "failed", "job_id": failed,
                  "error": [{"store_id": "S\u00e9", "error": "HTTP 404"}]}),
    ):  # fmt: skip
        api_answer = JSONResponse(expected)  # what the API itself would send
        status, headers, body = get(edge, f"/api/status?jobid={job_id}")
        request_id = headers.pop("x-request-id")  # made by Serve's own middleware, as for all
        assert (status, list(headers.items()), body) == (
            200, [(k.decode(), v.decode()) for k, v in api_answer.raw_headers], expected
        )  # fmt: skip
        assert len(request_id) >= 16
    assert serve.reached == []


@pytest.mark.parametrize(
    "target",
    ["/api/status?jobid=999", "/api/status?jobid=x", "/api/status?jobid=1&jobid=2",
     "/api/status", "/api/results?jobid=1", "/healthz"],
)  # fmt: skip
def test_anything_but_a_known_job_s_status_goes_on_to_the_api(tmp_path: Path, target: str) -> None:
    store_with_jobs(tmp_path)
    serve = App()
    assert get(FastStatus(serve, Settings(data_dir=tmp_path)), target)[0] == 299
    assert len(serve.reached) == 1


def test_without_a_database_on_this_node_status_goes_on_to_the_api(tmp_path: Path) -> None:
    serve = App()
    assert (
        get(FastStatus(serve, Settings(data_dir=tmp_path / "none")), "/api/status?jobid=1")[0]
        == 299
    )


def test_with_api_keys_only_the_owner_is_answered_the_rest_goes_on(tmp_path: Path) -> None:
    ongoing, _ = store_with_jobs(tmp_path, client_id_for_key("key-a"))
    serve = App()
    edge = FastStatus(serve, Settings(data_dir=tmp_path, api_keys=("key-a", "key-b")))
    target = f"/api/status?jobid={ongoing}"
    assert get(edge, target, [(b"authorization", b"Bearer key-a")])[0] == 200
    for headers in ([], [(b"authorization", b"Bearer key-b")], [(b"authorization", b"Bearer x")]):
        assert get(edge, target, headers)[0] == 299  # the API answers 401 or 400 {}
    assert len(serve.reached) == 3


def test_with_postgresql_a_sqlite_file_left_here_is_never_read(tmp_path: Path) -> None:
    ongoing, _ = store_with_jobs(tmp_path)
    serve = App()
    settings = Settings(
        data_dir=tmp_path, database_url="postgresql://u@127.0.0.1:1/jobs", database_timeout=1
    )
    # The configured database is unreachable: the edge says so, and never answers from the file.
    status, headers, body = get(FastStatus(serve, settings), f"/api/status?jobid={ongoing}")
    assert (status, serve.reached) == (503, [])
    assert body == {"error": "the job store is not answering; please retry"}
    assert headers["retry-after"] == "5"


class Unanswered:
    """A status source whose database does not answer (frozen, cut off)."""

    async def job_view(self, *_args: Any, **_kwargs: Any) -> Any:
        raise DatabaseUnavailable("the job database did not answer within 5 s; please retry")


def test_status_while_the_database_does_not_answer_is_a_503_with_retry_after(
    tmp_path: Path,
) -> None:
    """Answered at the edge, not passed on to the API to ask the same database again (each
    hop waited its own deadline before)."""
    serve = App()
    edge = FastStatus(serve, Settings(data_dir=tmp_path))
    edge._statuses = Unanswered()  # type: ignore[assignment]
    status, headers, body = get(edge, "/api/status?jobid=7")
    assert (status, headers["retry-after"], body) == (
        503, "5", {"error": "the job store is not answering; please retry"}
    )  # fmt: skip
    assert serve.reached == []


@pytest.mark.postgres
def test_concurrent_first_status_reads_open_one_pool(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each concurrent first read runs in a thread of its own: one opens the pool, and the
    others wait for it, instead of each opening a pool of its own and leaking it."""
    opened: list[PostgresConnections] = []

    class Counted(PostgresConnections):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

    PostgresStore(postgres_url).close()  # the tracker's store creates the tables; readers never
    monkeypatch.setattr(pg_reader, "PostgresConnections", Counted)
    source = status_source.StatusSource(Settings(database_url=postgres_url))

    async def first_reads() -> list[Any]:
        return await asyncio.gather(*(source.job_view(n) for n in range(1, 33)))

    assert asyncio.run(first_reads()) == [None] * 32
    assert len(opened) == 1
    for connections in opened:
        connections.close()


class QueueFull:
    """Serve's proxy with its queue full: what it answers by itself, in plain text."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"retry-after", b"1"), (b"content-length", b"39")],
            }
        )  # fmt: skip
        await send(
            {"type": "http.response.body", "body": b"Request dropped due to backpressure.\n"}
        )


def test_serves_own_errors_get_the_contracts_shape_and_keep_retry_after() -> None:
    status, headers, body = asyncio.run(call(ServeHeaderGuard(QueueFull())))
    assert (status, headers["retry-after"], body) == (
        503, "1", {"error": "Request dropped due to backpressure."}
    )  # fmt: skip
    assert headers["content-length"] == str(
        len(b'{"error":"Request dropped due to backpressure."}')
    )


def test_the_apis_own_json_errors_pass_the_guard_untouched() -> None:
    class JsonError:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await JSONResponse({"error": "x"}, status_code=429)(scope, receive, send)

    assert asyncio.run(call(ServeHeaderGuard(JsonError())))[::2] == (429, {"error": "x"})
