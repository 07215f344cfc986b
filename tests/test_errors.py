"""Every domain error reaches the client as its documented status and body, as the tracker
raises it: across Ray (pickled, raised again as a subclass of RayTaskError and of itself).
In process, through the API's real exception handlers, without a cluster."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from core.errors import (
    IdempotencyConflict,
    InvalidSubmission,
    JobAlreadyFinished,
    NotDispatching,
    RateLimited,
    ServiceBusy,
    StorageError,
    StoreMasterError,
    SubmissionTooLarge,
    TooManyOpenJobs,
)
from core.jobstore.sqlite.store import SqliteStore
from core.models import JobSubmission, Visit
from harness.asgi import answer_to


def across_ray(exc: Exception) -> Exception:
    """What awaiting an actor call that raised `exc` raises in the caller."""
    try:
        raise exc
    except Exception as raised:
        error = RayTaskError("JobTracker.call", "Traceback (remote)", raised)
    return RayError.from_bytes(error.to_bytes()).as_instanceof_cause()  # type: ignore[no-any-return]


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
    assert answer_to(across_ray(exc)) == (status, retry_after, body)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (TimeoutError(), 503),
        (GetTimeoutError("timed out"), 503),
        (RayActorError(), 503),
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
