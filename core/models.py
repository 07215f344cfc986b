"""Domain records shared by the API, the tracker and the workers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


def perimeter(width: int | None, height: int | None) -> int | None:
    """The spec's measure of an image: `2 * (height + width)`; None for an unmeasured one."""
    if width is None or height is None:
        return None
    return 2 * (height + width)


class JobStatus(StrEnum):
    """The spec's three statuses, as `/api/status` reports them."""

    ONGOING = "ongoing"  # some image is not settled yet
    COMPLETED = "completed"  # every image settled and none failed
    FAILED = "failed"  # every image settled, at least one store failed (or it was cancelled)


class JobState(StrEnum):
    """The finer lifecycle `/api/jobs` reports: the spec's statuses plus cancellation."""

    ONGOING = "ongoing"
    CANCELLING = "cancelling"  # cancelled; images already in flight are still settling
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FailureReason(StrEnum):
    """Why an image failed, in a few words fit for a metric label."""

    DOWNLOAD = "download"
    NOT_AN_IMAGE = "not_an_image"
    DECODE = "decode"
    UNKNOWN_STORE = "unknown_store"
    CANCELLED = "cancelled"
    WORKER_LOST = "worker_lost"  # its worker died with it in flight, every attempt
    INTERNAL = "internal"


JOB_CANCELLED = "job cancelled by the client before this store's images were all processed"
IMAGE_CANCELLED = "job cancelled by the client before this image was processed"


@dataclass(frozen=True, slots=True)
class Visit:
    store_id: str
    visit_time: str
    image_urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class JobSubmission:
    """A validated submission: what the client asked for, nothing derived yet."""

    visits: tuple[Visit, ...]
    callback_url: str | None = None  # receives one POST with the final status

    @property
    def image_count(self) -> int:
        return sum(len(visit.image_urls) for visit in self.visits)


@dataclass(frozen=True, slots=True)
class ImageTask:
    """One image of one job, as handed to a worker."""

    job_id: int
    index: int
    url: str


@dataclass(frozen=True, slots=True)
class ImageOutcome:
    """How one image settled: a measurement or a failure reason, never both."""

    job_id: int
    index: int
    processed_at: float
    width: int | None = None
    height: int | None = None
    error: str | None = None
    node_id: str | None = None
    reason: FailureReason | None = None  # set exactly when `error` is

    @property
    def perimeter(self) -> int | None:
        return perimeter(self.width, self.height)


@dataclass(frozen=True, slots=True)
class StoreError:
    store_id: str
    error: str


@dataclass(frozen=True, slots=True)
class JobView:
    """What `/api/status` reports about a job."""

    job_id: int
    status: JobStatus
    errors: tuple[StoreError, ...] = ()


def status_payload(view: JobView) -> dict[str, object]:
    """The spec's status body: `error` only when the job failed. Also the callback's body."""
    body: dict[str, object] = {"status": view.status.value, "job_id": view.job_id}
    if view.status is JobStatus.FAILED:
        body["error"] = [{"store_id": e.store_id, "error": e.error} for e in view.errors]
    return body


@dataclass(frozen=True, slots=True)
class JobDetail:
    """What `/api/jobs` reports about a job: its lifecycle, progress and times (Unix seconds)."""

    job_id: int
    state: JobState
    total: int
    done: int  # measured
    failed: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    cancelled_at: float | None
    errors: tuple[StoreError, ...]
    in_flight: int = 0

    @property
    def queued(self) -> int:
        return self.total - self.done - self.failed - self.in_flight


@dataclass(frozen=True, slots=True)
class ImageResult:
    """One row of `/api/results`: an image of the job and how it settled, if it has."""

    index: int
    store_id: str
    visit_time: str
    image_url: str
    width: int | None
    height: int | None
    error: str | None
    processed_at: float | None
    node_id: str | None

    @property
    def perimeter(self) -> int | None:
        return perimeter(self.width, self.height)


@dataclass(frozen=True, slots=True)
class ResultsPage:
    job: JobView
    total: int
    offset: int
    results: tuple[ImageResult, ...]
