"""Response shapes of the public API, and their construction from domain records."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from core.models import ImageResult, JobView, ResultsPage


class ErrorBody(BaseModel):
    error: str = Field(description="What is wrong, naming the field where there is one.")


class SubmitAccepted(BaseModel):
    job_id: int


class StoreErrorBody(BaseModel):
    store_id: str
    error: str


class StatusBody(BaseModel):
    """`error` is present only when `status` is `failed`."""

    status: Literal["ongoing", "completed", "failed"]
    job_id: int
    error: list[StoreErrorBody] | None = None


class ImageResultBody(BaseModel):
    store_id: str
    image_url: str
    visit_time: str
    state: Literal["pending", "done", "failed"]
    width: int | None = None
    height: int | None = None
    perimeter: int | None = None
    processed_at: float | None = Field(None, description="Unix time the image settled.")
    error: str | None = None
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


def status_body(view: JobView) -> dict[str, Any]:
    body: dict[str, Any] = {"status": view.status.value, "job_id": view.job_id}
    if view.status.value == "failed":
        body["error"] = [{"store_id": e.store_id, "error": e.error} for e in view.errors]
    return body


def image_result_body(row: ImageResult) -> dict[str, Any]:
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
    return body


def results_body(page: ResultsPage, limit: int) -> dict[str, Any]:
    end = page.offset + len(page.results)
    return {
        "job_id": page.job.job_id,
        "status": page.job.status.value,
        "total": page.total,
        "offset": page.offset,
        "limit": limit,
        "next_offset": end if end < page.total else None,
        "results": [image_result_body(row) for row in page.results],
    }
