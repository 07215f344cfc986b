"""Every domain error reaches the client as its documented status and body, as the tracker
raises it: across Ray (pickled, raised again as a subclass of RayTaskError and of itself), then
through the API's tracker client, a route and its exception handlers. In process, without a
cluster."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, GetTimeoutError

from core.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidSubmission,
    JobAlreadyFinished,
    NotDispatching,
    RateLimited,
    ServiceBusy,
    StorageError,
    StoreMasterError,
    SubmissionOutcomeUnknown,
    SubmissionTooLarge,
    TooManyOpenJobs,
    TrackerUnavailable,
)
from core.jobstore.sqlite.store import SqliteStore
from core.models import JobSubmission, Visit
from harness.asgi import ScriptedTracker, answer_to, api_with, request
from service.app import api
from tests.test_tracker_client import across_ray

SUBMISSION = (
    b'{"count": 1, "visits": [{"store_id": "S1", "image_url": ["http://a.test/1.jpg"],'
    b' "visit_time": "2025-03-11"}]}'
)


@pytest.fixture(autouse=True)
def _no_overrides_left() -> Any:
    yield
    api.dependency_overrides.clear()


def api_answer(tracker: ScriptedTracker, method: str, target: str) -> tuple[int, str | None, Any]:
    """How the API answers a request whose tracker call answers as `tracker` does: status,
    Retry-After, body."""
    body = SUBMISSION if method == "POST" else b""
    status, headers, raw = request(api_with(tracker), method, target, body)
    retry_after = dict(headers).get(b"retry-after")
    return status, None if retry_after is None else retry_after.decode(), json.loads(raw)


@pytest.mark.parametrize(
    ("exc", "status", "retry_after", "body"),
    [
        (StorageError("disk I/O error"), 503, "5",
         {"error": "the job store is not answering; please retry"}),
        (ServiceBusy("full"), 503, "30", {"error": "full"}),
        (NotDispatching("standing by"), 503, "30", {"error": "standing by"}),
        (StoreMasterError("gone"), 503, "5",
         {"error": "the store master cannot be read; please retry later"}),
        (RateLimited(2), 429, "2", {"error": "too many submissions; retry in 2 s"}),
        (TooManyOpenJobs("2 jobs are still open"), 429, None,
         {"error": "too many open jobs: 2 jobs are still open"}),
        (IdempotencyConflict("used for job 3"), 409, None, {"error": "used for job 3"}),
        (JobAlreadyFinished("job 3 has already failed"), 409, None,
         {"error": "job 3 has already failed"}),
    ],
)  # fmt: skip
def test_a_tracker_error_across_ray_is_its_documented_answer(
    exc: Exception, status: int, retry_after: str | None, body: Any
) -> None:
    tracker = ScriptedTracker(jobs=across_ray(exc))
    assert api_answer(tracker, "GET", "/api/jobs") == (status, retry_after, body)


@pytest.mark.parametrize(
    ("exc", "body"),
    [
        (StorageError("disk I/O error"),
         {"error": "the job could not be recorded; nothing was kept, please retry"}),
        (DatabaseUnavailable("the job database did not answer within 5 s; please retry"),
         {"error": "the job could not be recorded; nothing was kept, please retry"}),
        (SubmissionOutcomeUnknown("it may have been kept: a retry with the same key is safe"),
         {"error": "it may have been kept: a retry with the same key is safe"}),
    ],
)  # fmt: skip
def test_a_storage_error_of_a_submit_says_whether_the_job_was_kept(
    exc: Exception, body: Any
) -> None:
    for path in ("/api/submit/", "/api/submit"):
        answer = api_answer(ScriptedTracker(submit=across_ray(exc)), "POST", path)
        assert answer == (503, "5", body)


@pytest.mark.parametrize(
    "exc",
    [GetTimeoutError("timed out"), ActorDiedError(), across_ray(TimeoutError("slow"))],
    ids=["GetTimeoutError", "ActorDiedError", "TimeoutError-across-ray"],
)
def test_a_tracker_that_does_not_answer_is_503_on_every_route(exc: Exception) -> None:
    unavailable = (503, "5", {"error": "the job tracker is not answering; please retry"})
    for method, target, name in [
        ("GET", "/api/status?jobid=7", "status"),
        ("GET", "/api/results?jobid=7", "results"),
        ("GET", "/api/jobs", "jobs"),
        ("GET", "/api/jobs/7", "job_detail"),
        ("POST", "/api/jobs/7/cancel", "cancel"),
        ("POST", "/api/submit/", "submit"),
    ]:
        assert api_answer(ScriptedTracker(**{name: exc}), method, target) == unavailable, name
    healthz = api_answer(ScriptedTracker(ping=exc), "GET", "/healthz")
    assert healthz == (503, "5", {"status": "unavailable"})


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (TrackerUnavailable("the tracker did not answer: TimeoutError()"), 503),
        (InvalidSubmission("count must be a non-negative integer"), 400),
        (SubmissionTooLarge("a job may hold at most 5 images"), 413),
    ],
)
def test_the_callers_own_errors_are_their_documented_answer(exc: Exception, status: int) -> None:
    code, retry_after, body = answer_to(exc)
    assert code == status and list(body) == ["error"]
    assert (retry_after is not None) == (status == 503)


def test_a_bug_is_a_json_500_not_a_traceback() -> None:
    assert answer_to(KeyError("x")) == (500, None, {"error": "internal error"})


def test_every_read_of_a_failing_database_is_a_storage_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3")
    job_id, _ = store.create_job(
        JobSubmission((Visit("S", "2025-01-01", ("http://a/",)),)), "k", {}
    )
    store._db.set_progress_handler(lambda: 1, 1)  # every statement fails, as on a disk in EIO
    reads = [
        lambda: store.job_for_key("k", None),
        lambda: store.job_view(job_id),
        lambda: store.job_detail(job_id),
        lambda: store.recent_jobs(None, 0, 10),
        lambda: store.job_counts(),
        lambda: store.callbacks_due(),
        lambda: store.unfinished_jobs(),
        lambda: store.job_images(job_id),
        lambda: store.results_page(job_id, 0, 10),
    ]
    for read in reads:
        with pytest.raises(StorageError, match="could not read"):
            read()
    with pytest.raises(sqlite3.Error):  # the cause is kept
        store._db.execute("SELECT 1")
