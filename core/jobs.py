"""The live state of the unfinished jobs, as the tracker holds it between writes: which images
wait, which settled since the last write, what each client holds, and which images were on a
worker that died. Free of Ray and I/O; the tracker drives it from one event loop."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field, replace

from core.errors import ServiceBusy, TooManyOpenJobs
from core.models import (
    IMAGE_CANCELLED,
    FailureReason,
    ImageOutcome,
    ImageTask,
    JobDetail,
    JobState,
    JobSubmission,
)
from core.pending import PendingWrites
from core.scheduler import FairQueue
from core.settings import Settings

UNKNOWN_STORE = "store_id not in store master"

ImageKey = tuple[int, int]  # (job id, image index)


@dataclass(eq=False)
class ActiveJob:
    job_id: int
    urls: list[str]
    settled: bytearray  # one flag per image: settled images are never dispatched again
    client_id: str | None = None
    started: bool = False
    cancelled: bool = False
    unsettled: int = field(init=False)

    def __post_init__(self) -> None:
        self.unsettled = len(self.settled) - sum(self.settled)

    @classmethod
    def submitted(
        cls, job_id: int, submission: JobSubmission, failed: Collection[int], client_id: str | None
    ) -> ActiveJob:
        """A job just recorded, with the images in `failed` settled already."""
        urls = [url for visit in submission.visits for url in visit.image_urls]
        settled = bytearray(len(urls))
        for index in failed:
            settled[index] = 1
        return cls(job_id, urls, settled, client_id)

    def settle(self, index: int) -> bool:
        """Mark an image settled; False if it already was (a duplicate report)."""
        if self.settled[index]:
            return False
        self.settled[index] = 1
        self.unsettled -= 1
        return True

    def unsettled_indexes(self) -> list[int]:
        return [index for index, flag in enumerate(self.settled) if not flag]


def unknown_store_failures(submission: JobSubmission, known: Collection[str]) -> dict[int, str]:
    """The images whose visit names a store the Store Master lacks, by index, with the reason."""
    failed = {}
    index = 0
    for visit in submission.visits:
        if visit.store_id not in known:
            for offset in range(len(visit.image_urls)):
                failed[index + offset] = UNKNOWN_STORE
        index += len(visit.image_urls)
    return failed


def cancelled_outcome(job_id: int, index: int, when: float) -> ImageOutcome:
    return ImageOutcome(job_id, index, when, error=IMAGE_CANCELLED, reason=FailureReason.CANCELLED)


def worker_lost_outcome(job_id: int, index: int, attempts: int) -> ImageOutcome:
    return ImageOutcome(
        job_id,
        index,
        time.time(),
        error=f"the image worker died while processing this image, {attempts} times",
        reason=FailureReason.WORKER_LOST,
    )


@dataclass(frozen=True)
class JobLimits:
    max_open_jobs_per_client: int
    max_queued_images: int
    max_image_attempts: int

    @classmethod
    def from_settings(cls, settings: Settings) -> JobLimits:
        return cls(
            max_open_jobs_per_client=settings.max_open_jobs_per_client,
            max_queued_images=settings.max_queued_images,
            max_image_attempts=settings.max_image_attempts,
        )


class JobBook:
    """Every unfinished job, its queue of images and the writes not yet made."""

    def __init__(self, limits: JobLimits) -> None:
        self._limits = limits
        self.jobs: dict[int, ActiveJob] = {}
        self.queue = FairQueue()
        self.pending = PendingWrites()
        # Images that were in flight on a worker that died, with how often that happened: at
        # most one of them runs on a worker at a time, so one image that kills its worker
        # cannot take the others down with it again and again.
        self._deaths: dict[ImageKey, int] = {}
        self._suspects: deque[ImageKey] = deque()
        self._suspect_since: dict[ImageKey, float] = {}  # monotonic: when each was put back
        # Submissions between their admission and their job's activation, by client id
        # (None: no API keys), with their images: counted against the limits meanwhile.
        self._admitted: dict[str | None, int] = {}
        self._admitted_images = 0

    @property
    def waiting(self) -> int:
        """Images waiting for a worker."""
        return len(self.queue) + len(self._suspects)

    def oldest_waiting(self, now: float) -> float:
        """Seconds the longest-waiting image has waited for a worker by `now` (the monotonic
        clock); 0 when none waits."""
        times = [
            since
            for (job_id, index), since in self._suspect_since.items()
            if (job := self.jobs.get(job_id)) is not None and not job.settled[index]
        ]
        queued = self.queue.oldest_since()
        since = min([*times, *([] if queued is None else [queued])], default=now)
        return max(0.0, now - since)

    @contextlib.contextmanager
    def admission(
        self,
        client_id: str | None,
        images: int,
        open_elsewhere: int = 0,
        unsettled_elsewhere: int = 0,
    ) -> Iterator[None]:
        """Hold a place for a submission against the open-jobs and queued-images limits until
        its job is active, counting the jobs held here and those `elsewhere` (this client's
        open jobs, every job's unsettled images). Check and hold are one synchronous step, so
        concurrent submissions cannot all pass one check before any of them is counted."""
        if client_id is not None:
            limit = self._limits.max_open_jobs_per_client
            open_jobs = (
                open_elsewhere
                + self._admitted.get(client_id, 0)
                + sum(1 for job in self.jobs.values() if job.client_id == client_id)
            )
            if open_jobs >= limit:
                raise TooManyOpenJobs(f"{open_jobs} jobs are still open; at most {limit} may be")
        unsettled = (
            unsettled_elsewhere
            + self._admitted_images
            + sum(job.unsettled for job in self.jobs.values())
        )
        if unsettled + images > self._limits.max_queued_images:
            raise ServiceBusy(
                f"the service holds {unsettled} unsettled images and takes at most"
                f" {self._limits.max_queued_images}; retry once some jobs have finished"
            )
        self._admitted[client_id] = self._admitted.get(client_id, 0) + 1
        self._admitted_images += images
        try:
            yield
        finally:
            self._admitted_images -= images
            if self._admitted[client_id] == 1:
                del self._admitted[client_id]
            else:
                self._admitted[client_id] -= 1

    def activate(self, job: ActiveJob) -> int:
        """Take on a job (new or recovered); returns the images it settled as cancelled."""
        self.jobs[job.job_id] = job
        cancelled = 0
        if job.cancelled:
            # Recovered while cancelling: its images in flight went down with the old tracker,
            # so nothing is left to wait for.
            cancelled = self.settle_cancelled(job, job.unsettled_indexes())
        if job.unsettled == 0:
            if job.job_id not in self.pending.finished:
                self.pending.finished.append(job.job_id)
            return cancelled
        self.queue.add(job.job_id, job.unsettled_indexes())
        return cancelled

    def record(self, outcome: ImageOutcome) -> None:
        """An image settled; a duplicate or one of a job no longer held is ignored."""
        key = (outcome.job_id, outcome.index)
        self._deaths.pop(key, None)
        job = self.jobs.get(outcome.job_id)
        if job is None or not job.settle(outcome.index):
            return
        self.pending.outcomes.append(outcome)
        if job.unsettled == 0:
            self.pending.finished.append(job.job_id)

    def cancel(self, job: ActiveJob, in_flight: Collection[int]) -> int:
        """Stop the job: its queued images settle as cancelled now, those in flight (indexes)
        as they finish. Returns how many settled now."""
        job.cancelled = True
        self.queue.drop_job(job.job_id)
        self.pending.cancel(job.job_id, time.time())
        return self.settle_cancelled(
            job, [index for index in job.unsettled_indexes() if index not in in_flight]
        )

    def settle_cancelled(self, job: ActiveJob, indexes: list[int]) -> int:
        now = time.time()
        for index in indexes:
            self.record(cancelled_outcome(job.job_id, index, now))
        return len(indexes)

    def take_batch(self, free: int, held: Collection[ImageKey]) -> list[ImageTask]:
        """Up to `free` images for a worker holding `held`, taken fairly across jobs, led by
        at most one image whose worker died under it (a suspect) if the worker holds none."""
        batch: list[ImageTask] = []
        if self._suspects and not any(key in self._deaths for key in held):
            while len(batch) < free and self._suspects:
                suspect = self._suspects.popleft()
                self._suspect_since.pop(suspect, None)
                if self._add(suspect, batch):
                    break
        while len(batch) < free and (taken := self.queue.take()) is not None:
            self._add(taken, batch)
        return batch

    def _add(self, key: ImageKey, batch: list[ImageTask]) -> bool:
        """Add the image to the batch unless it has settled meanwhile (by a worker thought
        lost); True if added."""
        job_id, index = key
        job = self.jobs.get(job_id)
        if job is None or job.settled[index]:
            return False
        if not job.started:
            job.started = True
            self.pending.started.append((job_id, time.time()))
        batch.append(ImageTask(job_id, index, job.urls[index]))
        return True

    def worker_lost(self, keys: Iterable[ImageKey]) -> tuple[list[ImageOutcome], int]:
        """The images a dead worker held: each is tried again, one at a time, until it has been
        on `max_image_attempts` dying workers. Returns the images failed for it, and how many
        settled as cancelled (their job was being cancelled)."""
        limit = self._limits.max_image_attempts
        failed: list[ImageOutcome] = []
        cancelled = 0
        for key in keys:
            job_id, index = key
            job = self.jobs.get(job_id)
            if job is None or job.settled[index]:
                continue
            if job.cancelled:
                cancelled += self.settle_cancelled(job, [index])
                continue
            deaths = self._deaths[key] = self._deaths.get(key, 0) + 1
            if deaths >= limit:
                outcome = worker_lost_outcome(job_id, index, deaths)
                self.record(outcome)
                failed.append(outcome)
            else:
                self._suspects.append(key)
                self._suspect_since[key] = time.monotonic()
        return failed, cancelled

    def finished(self, job_ids: Iterable[int]) -> None:
        """Forget jobs whose every image is on disk."""
        for job_id in job_ids:
            del self.jobs[job_id]
            self.queue.drop_job(job_id)

    def with_live_progress(self, detail: JobDetail, in_flight: int) -> JobDetail:
        """Counts from disk plus what settled since the last write, and the images in flight."""
        if detail.state not in (JobState.ONGOING, JobState.CANCELLING):
            return detail
        unsaved = [o for o in self.pending.outcomes if o.job_id == detail.job_id]
        failed = sum(1 for o in unsaved if o.error is not None)
        return replace(
            detail,
            done=detail.done + len(unsaved) - failed,
            failed=detail.failed + failed,
            in_flight=in_flight,
        )
