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
    ONGOING = "ongoing"  # some image is not settled yet
    COMPLETED = "completed"  # every image settled and none failed
    FAILED = "failed"  # every image settled, at least one store failed


@dataclass(frozen=True, slots=True)
class Visit:
    store_id: str
    visit_time: str
    image_urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class JobSubmission:
    """A validated submission: what the client asked for, nothing derived yet."""

    visits: tuple[Visit, ...]

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
