"""What the job store hands back and takes beside the models: the same for every backend."""

from __future__ import annotations

from dataclasses import dataclass

from core.models import JobView


@dataclass(frozen=True, slots=True)
class DueCallback:
    job_id: int
    url: str
    view: JobView


@dataclass(frozen=True, slots=True)
class UnfinishedJob:
    """An ongoing job as found on disk; its images are read one job at a time (`job_images`)."""

    job_id: int
    client_id: str | None
    started: bool = False
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class CancelMark:
    """A cancel, placed in the stream of outcomes: `position` outcomes of the batch it is saved
    with settled before it. The stores left unfinished are those without a result then."""

    job_id: int
    when: float
    position: int = 0
