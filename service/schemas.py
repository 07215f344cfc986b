"""Response shapes of the public API, and their construction from domain records. The routes
return these models, so FastAPI checks every answer against the shape it declares."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.models import ImageResult, JobDetail, JobView, ResultsPage, status_payload


class ErrorBody(BaseModel):
    error: str = Field(description="What is wrong, naming the field where there is one.")


class SubmitAccepted(BaseModel):
    job_id: int


class StoreErrorBody(BaseModel):
    store_id: str
    error: str


class StatusBody(BaseModel):
    """`error` is present only when `status` is `failed`."""

    # The route leaves out the fields its builder did not set: `error`, unless failed.
    status: Literal["ongoing", "completed", "failed"]
    job_id: int
    error: list[StoreErrorBody] | None = None


class ImageResultBody(BaseModel):
    """A `pending` row has no more fields; a `done` one has `width`, `height`, `perimeter`,
    `processed_at` and `node_id`; a `failed` one `error`, `processed_at` and `node_id` if known."""

    # The route leaves out the fields its builder did not set. The fields are declared in the
    # order the rows have always had on the wire: a `failed` row's `error` before its time.
    store_id: str
    image_url: str
    visit_time: str
    state: Literal["pending", "done", "failed"]
    width: int | None = None
    height: int | None = None
    perimeter: int | None = None
    error: str | None = None
    processed_at: float | None = Field(None, description="Unix time the image settled.")
    node_id: str | None = Field(None, description="The Ray node that processed the image.")


class ResultsBody(BaseModel):
    job_id: int
    status: Literal["ongoing", "completed", "failed"]
    total: int
    offset: int
    limit: int
    next_offset: int | None = Field(
        description="Pass as `offset` for the next page; null at the end."
    )
    results: list[ImageResultBody]


class JobDetailBody(BaseModel):
    """A job's lifecycle and progress. `status` adds `cancelling` (cancelled, images in flight
    still settling) and `cancelled` to the spec's three; `/api/status` reports a cancelled job
    as `failed`."""

    job_id: int
    status: Literal["ongoing", "cancelling", "completed", "failed", "cancelled"]
    total: int = Field(description="Images in the job.")
    done: int = Field(description="Images measured.")
    failed: int = Field(description="Images that failed (cancelled ones included).")
    in_flight: int = Field(description="Images being processed now.")
    queued: int = Field(description="Images waiting for a worker.")
    created_at: str = Field(description="ISO 8601, UTC.")
    started_at: str | None = Field(description="When its first image went to a worker.")
    finished_at: str | None
    cancelled_at: str | None
    errors: list[StoreErrorBody] = Field(description="Per-store errors, once the job has ended.")


class JobListBody(BaseModel):
    total: int
    offset: int
    limit: int
    next_offset: int | None
    jobs: list[JobDetailBody] = Field(description="Newest first.")


class HealthBody(BaseModel):
    status: Literal["ok", "unavailable"]


def iso_time(seconds: float) -> str:
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def iso_time_or_none(seconds: float | None) -> str | None:
    return None if seconds is None else iso_time(seconds)


def status_body(view: JobView) -> StatusBody:
    """The API's status answer: the body the edge and the completion callback send too
    (`status_payload`), checked against its model."""
    return StatusBody.model_validate(status_payload(view))


def job_detail_body(detail: JobDetail) -> JobDetailBody:
    return JobDetailBody(
        job_id=detail.job_id,
        status=detail.state.value,
        total=detail.total,
        done=detail.done,
        failed=detail.failed,
        in_flight=detail.in_flight,
        queued=detail.queued,
        created_at=iso_time(detail.created_at),
        started_at=iso_time_or_none(detail.started_at),
        finished_at=iso_time_or_none(detail.finished_at),
        cancelled_at=iso_time_or_none(detail.cancelled_at),
        errors=[StoreErrorBody(store_id=e.store_id, error=e.error) for e in detail.errors],
    )


def job_list_body(total: int, offset: int, limit: int, jobs: list[JobDetail]) -> JobListBody:
    end = offset + len(jobs)
    return JobListBody(
        total=total,
        offset=offset,
        limit=limit,
        next_offset=end if end < total else None,
        jobs=[job_detail_body(detail) for detail in jobs],
    )


def image_result_body(row: ImageResult) -> ImageResultBody:
    """Only the fields of the row's state are set (a `done` row's `node_id` even when None)."""
    body: dict[str, Any] = {
        "store_id": row.store_id,
        "image_url": row.image_url,
        "visit_time": row.visit_time,
    }
    if row.processed_at is None:
        body["state"] = "pending"
    elif row.error is not None:
        body.update(state="failed", error=row.error, processed_at=row.processed_at)
        if row.node_id is not None:
            body["node_id"] = row.node_id
    else:
        body.update(
            state="done",
            width=row.width,
            height=row.height,
            perimeter=row.perimeter,
            processed_at=row.processed_at,
            node_id=row.node_id,
        )
    return ImageResultBody.model_validate(body)


def results_body(page: ResultsPage, limit: int) -> ResultsBody:
    end = page.offset + len(page.results)
    return ResultsBody(
        job_id=page.job.job_id,
        status=page.job.status.value,
        total=page.total,
        offset=page.offset,
        limit=limit,
        next_offset=end if end < page.total else None,
        results=[image_result_body(row) for row in page.results],
    )
