"""What both job stores share about their rows: the columns their queries read and the records
made of them, so that SQLite and PostgreSQL answer alike."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from core.errors import IdempotencyConflict
from core.models import JobDetail, JobState, JobStatus, JobSubmission, JobView, StoreError

# An image with its visit's fields, as the stores' queries read it.
IMAGES_WITH_VISITS = "images i JOIN visits v ON v.job_id = i.job_id AND v.visit = i.visit"

JOB_DETAIL_COLUMNS = (
    "id, status, errors, image_count, settled_count, failed_count,"
    " created_at, started_at, finished_at, cancelled_at"
)

JOB_VIEW_COLUMNS = "status, errors, client_id"

UNSTORABLE_RESULT = "internal error: the image's result could not be stored"


def detail_from_row(row: Sequence[Any]) -> JobDetail:
    """A row of `JOB_DETAIL_COLUMNS` (more columns may follow) as a record."""
    (job_id, status, errors, total, settled, failed, created, started, finished, cancelled) = row[
        :10
    ]
    state = job_state(status, cancelled is not None)
    return JobDetail(
        job_id=job_id,
        state=state,
        total=total,
        done=settled - failed,
        failed=failed,
        created_at=created,
        started_at=started,
        finished_at=finished,
        cancelled_at=cancelled,
        errors=() if status == JobStatus.ONGOING.value else store_errors(errors),
    )


def view_from_row(
    job_id: int, row: Sequence[Any] | None, client_id: str | None, exact: bool
) -> JobView | None:
    """A row of `JOB_VIEW_COLUMNS` as the job's status; None if there is no row, or if
    `client_id` is given and the job is another's. With `exact`, a `client_id` of None matches
    only a job submitted without API keys."""
    if row is None or ((client_id is not None or exact) and row[2] != client_id):
        return None
    return JobView(job_id=job_id, status=JobStatus(row[0]), errors=store_errors(row[1]))


def store_errors(errors_json: str | None) -> tuple[StoreError, ...]:
    """The `errors` column: per-store entries, as saved when the job ended or was cancelled."""
    return tuple(StoreError(**entry) for entry in json.loads(errors_json or "[]"))


def job_state(status: str, cancelled: bool) -> JobState:
    if not cancelled:
        return JobState(status)
    return JobState.CANCELLING if status == JobStatus.ONGOING.value else JobState.CANCELLED


def images_in_order(submission: JobSubmission) -> Iterable[tuple[int, str]]:
    """Every image URL of the submission in order (its index is the position here), with its
    visit's position."""
    for position, visit in enumerate(submission.visits):
        for url in visit.image_urls:
            yield position, url


def job_of_key(row: Sequence[Any] | None, request_hash: str | None) -> int | None:
    """The job an Idempotency-Key names, from its `(id, request_hash)` row (None: no such
    job); a key sent again with another body is a conflict, not that job."""
    if row is None:
        return None
    if request_hash is not None and row[1] != request_hash:
        raise IdempotencyConflict(
            f"this Idempotency-Key was used for job {row[0]} with a different body"
        )
    return int(row[0])
