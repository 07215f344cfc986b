"""The API's answers byte for byte (status, headers in order, body), in process: the real
FastAPI routes and exception handlers of service/app.py, the Serve instance injected, a tracker
that answers from a script. The bytes are the contract clients read: a change to how the routes
build their answers must leave them as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ray.exceptions import GetTimeoutError

from core.errors import JobAlreadyFinished, StorageError
from core.models import (
    ImageResult,
    JobDetail,
    JobState,
    JobStatus,
    JobView,
    ResultsPage,
    StoreError,
)
from core.settings import Settings
from harness.asgi import ScriptedTracker, api_with, request
from service.app import api

pytestmark = pytest.mark.timeout(30)

JSON = [(b"content-type", b"application/json")]


@pytest.fixture(autouse=True)
def _no_overrides_left() -> Any:
    yield
    api.dependency_overrides.clear()


def json_answer(
    status: int, body: bytes, before: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """What a JSON answer looks like on the wire: extra headers first, then its length and
    type, as Starlette orders them."""
    return status, [*(before or []), (b"content-length", str(len(body)).encode()), *JSON], body


def get(tracker: ScriptedTracker, target: str, settings: Settings | None = None) -> Any:
    return request(api_with(tracker, settings), "GET", target)


FAILED_VIEW = JobView(
    7, JobStatus.FAILED, (StoreError("S\u00e9", 'HTTP 404 "gone"'), StoreError("S2", "x"))
)


@pytest.mark.parametrize(
    ("view", "body"),
    [
        (JobView(7, JobStatus.ONGOING), b'{"status":"ongoing","job_id":7}'),
        (JobView(7, JobStatus.COMPLETED), b'{"status":"completed","job_id":7}'),
        (FAILED_VIEW,
         b'{"status":"failed","job_id":7,"error":[{"store_id":"S\xc3\xa9","error":'
         b'"HTTP 404 \\"gone\\""},{"store_id":"S2","error":"x"}]}'),
        (JobView(7, JobStatus.FAILED), b'{"status":"failed","job_id":7,"error":[]}'),
    ],
)  # fmt: skip
def test_status_bytes(view: JobView, body: bytes) -> None:
    tracker = ScriptedTracker(status=view)
    assert get(tracker, "/api/status?jobid=7") == json_answer(200, body)
    assert tracker.calls == [("status", (7, None))]


@pytest.mark.parametrize("query", ["jobid=8", "", "jobid=x", "jobid=-1", "jobid=1.5"])
def test_status_of_an_unknown_or_unnamed_job_is_400_empty(query: str) -> None:
    assert get(ScriptedTracker(status=None), f"/api/status?{query}") == json_answer(400, b"{}")


class FailingReader:
    """A database beside the replica whose reads fail (disk trouble, a lock)."""

    async def job_view(self, job_id: int, client: str | None) -> JobView | None:
        raise StorageError("disk I/O error")


def test_status_is_asked_of_the_tracker_when_the_database_beside_fails() -> None:
    tracker = ScriptedTracker(status=JobView(7, JobStatus.ONGOING))
    app = api_with(tracker, statuses=FailingReader())
    assert request(app, "GET", "/api/status?jobid=7") == json_answer(
        200, b'{"status":"ongoing","job_id":7}'
    )
    assert tracker.calls == [("status", (7, None))]


PENDING = ImageResult(0, "S1", "2025-03-11", "http://a.test/0.jpg", None, None, None, None, None)
DONE = ImageResult(
    1, "S1", "2025-03-11", "http://a.test/1.jpg", 640, 480, None, 1795903413.04, "n1"
)
DONE_NO_NODE = ImageResult(2, "S\u00e9", "2025-03-11T10:00:00Z", "http://a.test/2.png", 3, 2,
                           None, 1795903413.0, None)  # fmt: skip
FAILED = ImageResult(3, "S2", "2025-03-11", "http://a.test/3", None, None, "HTTP 404",
                     1795903412.9812346, "n2")  # fmt: skip
FAILED_NO_NODE = ImageResult(4, "S2", "2025-03-11", "http://a.test/4", None, None,
                             "store_id not in store master", 1795903400.5, None)  # fmt: skip

ROWS_BYTES = (
    b'{"store_id":"S1","image_url":"http://a.test/0.jpg","visit_time":"2025-03-11",'
    b'"state":"pending"},'
    b'{"store_id":"S1","image_url":"http://a.test/1.jpg","visit_time":"2025-03-11",'
    b'"state":"done","width":640,"height":480,"perimeter":2240,"processed_at":1795903413.04,'
    b'"node_id":"n1"},'
    b'{"store_id":"S\xc3\xa9","image_url":"http://a.test/2.png",'
    b'"visit_time":"2025-03-11T10:00:00Z","state":"done","width":3,"height":2,"perimeter":10,'
    b'"processed_at":1795903413.0,"node_id":null},'
    b'{"store_id":"S2","image_url":"http://a.test/3","visit_time":"2025-03-11",'
    b'"state":"failed","error":"HTTP 404","processed_at":1795903412.9812346,"node_id":"n2"},'
    b'{"store_id":"S2","image_url":"http://a.test/4","visit_time":"2025-03-11",'
    b'"state":"failed","error":"store_id not in store master","processed_at":1795903400.5}'
)


def test_results_bytes_every_kind_of_row() -> None:
    page = ResultsPage(FAILED_VIEW, 12, 5, (PENDING, DONE, DONE_NO_NODE, FAILED, FAILED_NO_NODE))
    tracker = ScriptedTracker(results=page)
    assert get(tracker, "/api/results?jobid=7&offset=5&limit=5") == json_answer(
        200,
        b'{"job_id":7,"status":"failed","total":12,"offset":5,"limit":5,"next_offset":10,'
        b'"results":[' + ROWS_BYTES + b"]}",
    )
    assert tracker.calls == [("results", (7, 5, 5, None))]


def test_results_bytes_last_and_empty_pages() -> None:
    last = ResultsPage(JobView(7, JobStatus.ONGOING), 1, 0, (PENDING,))
    assert get(ScriptedTracker(results=last), "/api/results?jobid=7") == json_answer(
        200,
        b'{"job_id":7,"status":"ongoing","total":1,"offset":0,"limit":100,"next_offset":null,'
        b'"results":[{"store_id":"S1","image_url":"http://a.test/0.jpg",'
        b'"visit_time":"2025-03-11","state":"pending"}]}',
    )
    beyond = ResultsPage(JobView(7, JobStatus.COMPLETED), 1, 9, ())
    assert get(ScriptedTracker(results=beyond), "/api/results?jobid=7&offset=9") == json_answer(
        200,
        b'{"job_id":7,"status":"completed","total":1,"offset":9,"limit":100,"next_offset":null,'
        b'"results":[]}',
    )


@pytest.mark.parametrize("query", ["jobid=8", "", "jobid=abc"])
def test_results_of_an_unknown_or_unnamed_job_is_400_empty(query: str) -> None:
    assert get(ScriptedTracker(results=None), f"/api/results?{query}") == json_answer(400, b"{}")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", b"limit must be between 1 and 1000"),
        ("limit=1001", b"limit must be between 1 and 1000"),
        ("limit=x", b"limit must be a non-negative integer"),
        ("offset=-1", b"offset must be a non-negative integer"),
        ("offset=", b"offset must be a non-negative integer"),
    ],
)
def test_bad_paging_is_400_naming_the_parameter(query: str, message: bytes) -> None:
    for path in ("/api/results?jobid=7&", "/api/jobs?"):
        tracker = ScriptedTracker()  # never asked
        assert get(tracker, path + query) == json_answer(400, b'{"error":"' + message + b'"}')


RUNNING = JobDetail(7, JobState.ONGOING, 40, 12, 1, 1795903400.0, 1795903400.5, None, None,
                    (), in_flight=4)  # fmt: skip
ENDED = JobDetail(6, JobState.CANCELLED, 3, 1, 2, 1795903300.123, None, 1795903302.9999,
                  1795903301.0, (StoreError("S\u00e9", "job cancelled"),))  # fmt: skip
RUNNING_BYTES = (
    b'{"job_id":7,"status":"ongoing","total":40,"done":12,"failed":1,"in_flight":4,'
    b'"queued":23,"created_at":"2026-11-28T22:03:20.000Z","started_at":"2026-11-28T22:03:20.500Z",'
    b'"finished_at":null,"cancelled_at":null,"errors":[]}'
)
ENDED_BYTES = (
    b'{"job_id":6,"status":"cancelled","total":3,"done":1,"failed":2,"in_flight":0,"queued":0,'
    b'"created_at":"2026-11-28T22:01:40.123Z","started_at":null,'
    b'"finished_at":"2026-11-28T22:01:42.999Z","cancelled_at":"2026-11-28T22:01:41.000Z",'
    b'"errors":[{"store_id":"S\xc3\xa9","error":"job cancelled"}]}'
)


def test_job_detail_bytes() -> None:
    tracker = ScriptedTracker(job_detail=RUNNING)
    assert get(tracker, "/api/jobs/7") == json_answer(200, RUNNING_BYTES)
    assert get(ScriptedTracker(job_detail=ENDED), "/api/jobs/6") == json_answer(200, ENDED_BYTES)
    assert tracker.calls == [("job_detail", (7, None))]


@pytest.mark.parametrize("job_id", ["8", "abc", "1.5"])
def test_job_detail_of_an_unknown_job_is_404_naming_it(job_id: str) -> None:
    body = b'{"error":"no job ' + job_id.encode() + b'"}'
    assert get(ScriptedTracker(job_detail=None), f"/api/jobs/{job_id}") == json_answer(404, body)


def test_job_list_bytes() -> None:
    tracker = ScriptedTracker(jobs=(5, [RUNNING, ENDED]))
    assert get(tracker, "/api/jobs?offset=0&limit=2") == json_answer(
        200,
        b'{"total":5,"offset":0,"limit":2,"next_offset":2,"jobs":['
        + RUNNING_BYTES
        + b","
        + ENDED_BYTES
        + b"]}",
    )
    assert tracker.calls == [("jobs", (None, 0, 2))]
    assert get(ScriptedTracker(jobs=(2, [ENDED])), "/api/jobs?offset=1") == json_answer(
        200,
        b'{"total":2,"offset":1,"limit":20,"next_offset":null,"jobs":[' + ENDED_BYTES + b"]}",
    )
    assert get(ScriptedTracker(jobs=(0, [])), "/api/jobs") == json_answer(
        200, b'{"total":0,"offset":0,"limit":20,"next_offset":null,"jobs":[]}'
    )


def test_cancel_bytes() -> None:
    tracker = ScriptedTracker(cancel=RUNNING)
    assert request(api_with(tracker), "POST", "/api/jobs/7/cancel") == json_answer(
        202, RUNNING_BYTES
    )
    assert tracker.calls == [("cancel", (7, None))]
    for job_id in ("8", "x"):
        assert request(
            api_with(ScriptedTracker(cancel=None)), "POST", f"/api/jobs/{job_id}/cancel"
        ) == (json_answer(404, b'{"error":"no job ' + job_id.encode() + b'"}'))
    ended = ScriptedTracker(cancel=JobAlreadyFinished("job 6 has already failed"))
    assert request(api_with(ended), "POST", "/api/jobs/6/cancel") == json_answer(
        409, b'{"error":"job 6 has already failed"}'
    )


SUBMISSION = (
    b'{"count": 1, "visits": [{"store_id": "S1", "image_url": ["http://a.test/1.jpg"],'
    b' "visit_time": "2025-03-11"}]}'
)


@pytest.mark.parametrize("path", ["/api/submit/", "/api/submit"])
def test_submit_bytes(path: str) -> None:
    tracker = ScriptedTracker(submit=12)
    answer = request(api_with(tracker), "POST", path, SUBMISSION)
    assert answer == json_answer(201, b'{"job_id":12}')
    [(name, (_submission, _key, client, fingerprint, caller))] = tracker.calls
    assert (name, client, fingerprint, caller) == ("submit", None, None, "127.0.0.1")


def test_an_idempotency_key_header_is_scoped_by_client_and_sent_with_the_body_s_hash() -> None:
    tracker = ScriptedTracker(submit=12)
    keys = Settings(data_dir=Path("/nonexistent"), api_keys=("key-a",))
    headers = [(b"idempotency-key", b"k-1"), (b"authorization", b"Bearer key-a")]
    answer = request(api_with(tracker, keys), "POST", "/api/submit/", SUBMISSION, headers)
    assert answer == json_answer(201, b'{"job_id":12}')
    [(_name, (_submission, idempotency_key, client, fingerprint, caller))] = tracker.calls
    assert idempotency_key == f"idempotency:{client}:k-1" and client == caller
    assert client is not None and fingerprint is not None


def test_submit_errors_bytes() -> None:
    small = Settings(data_dir=Path("/nonexistent"), max_body_bytes=10)
    assert request(api_with(ScriptedTracker(), small), "POST", "/api/submit/", SUBMISSION) == (
        json_answer(413, b'{"error":"body is larger than 10 bytes"}')
    )
    bad_key = [(b"idempotency-key", b"has space")]
    assert request(api_with(ScriptedTracker()), "POST", "/api/submit/", SUBMISSION, bad_key) == (
        json_answer(400, b'{"error":"Idempotency-Key must be 1 to 255 visible ASCII characters"}')
    )
    assert request(api_with(ScriptedTracker()), "POST", "/api/submit/", b"{") == json_answer(
        400, b'{"error":"body must be a JSON object"}'
    )


def test_healthz_bytes() -> None:
    assert get(ScriptedTracker(ping="node"), "/healthz") == json_answer(200, b'{"status":"ok"}')
    assert get(ScriptedTracker(ping=GetTimeoutError("slow")), "/healthz") == json_answer(
        503, b'{"status":"unavailable"}', before=[(b"retry-after", b"5")]
    )
