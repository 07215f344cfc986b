"""Puts what the held jobs settled on disk: every write waiting (outcomes, starts, cancels,
finished jobs) in one store call, put back in front if that call fails; then the finished
jobs' callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from actors.callbacks import CallbackDelivery
from actors.held_jobs import HeldJobs
from core.jobstore import JobStore
from core.jobstore.dbthread import DatabaseThread
from core.models import FailureReason, JobState
from core.tasks import BackgroundTasks

if TYPE_CHECKING:  # the metrics are Ray's: this module stays free of Ray
    from actors.metrics import ImageMetrics, TrackerMetrics

ENDED = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)

# "job finished" closes a job's lines with "job recorded" and "job cancelled": all three come
# from the tracker's logger, which operators filter on (the README's log example shows it).
log = logging.getLogger("actors.tracker")


class Flusher:
    """The held jobs' writes, saved one flush at a time and in order."""

    def __init__(
        self,
        jobs: HeldJobs,
        store: JobStore,
        db: DatabaseThread,
        callbacks: CallbackDelivery,
        image_metrics: ImageMetrics,
        metrics: TrackerMetrics,
        tasks: BackgroundTasks,
        interval: float,
    ) -> None:
        self._jobs = jobs
        self._store = store
        self._db = db
        self._callbacks = callbacks
        self._image_metrics = image_metrics
        self._metrics = metrics
        self._tasks = tasks
        self._interval = interval
        self._lock = asyncio.Lock()
        self._saving = 0  # outcomes of the batch whose store call is under way
        self._due = asyncio.Event()

    @property
    def backlog(self) -> int:
        """Settled images not yet written: those waiting, and those of the save under way (out
        of the pending writes until it fails, which may take the store's whole deadline)."""
        return len(self._jobs.book.pending.outcomes) + self._saving

    def job_ended(self) -> None:
        """A held job's last image settled: flush now, not at the end of the interval, so that
        its client sees it end at once (a small job's whole wait is a few tenths of a second)."""
        self._due.set()

    async def step(self) -> None:
        """One turn of the flush loop: wait the flush interval, or less when a job ended, then
        flush."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._due.wait(), self._interval)
        self._due.clear()
        await self.flush()

    async def flush(self) -> int:
        """Save every write waiting, one flush at a time; returns the outcomes saved."""
        async with self._lock:
            batch = self._jobs.book.pending.take()
            if not batch:
                return 0
            start = time.perf_counter()
            self._saving = len(batch.outcomes)
            try:
                unstorable = await self._db.run(
                    self._store.save_outcomes,
                    batch.outcomes,
                    batch.finished,
                    batch.started,
                    batch.cancels,
                )
            except BaseException:
                self._jobs.book.pending.restore(batch)
                raise
            finally:
                self._saving = 0
                self._metrics.flushed(time.perf_counter() - start)
            for outcome in unstorable:
                log.error("the result of image %d could not be stored; it failed instead",
                          outcome.index, extra={"job_id": outcome.job_id})  # fmt: skip
            self._image_metrics.failed_at_once(FailureReason.INTERNAL, len(unstorable))
            self._jobs.book.finished(batch.finished)
            for job_id in batch.finished:
                log.info("job finished", extra={"job_id": job_id})
            if batch.finished:
                self._tasks.spawn(self._callbacks.for_jobs(batch.finished))
                self._tasks.spawn(self._durations(batch.finished))
            return len(batch.outcomes)

    async def _durations(self, job_ids: list[int]) -> None:
        """Each ended job's time from submission to its final state, read back from the store
        (a job recovered after a restart has its times there only)."""

        def read() -> list[tuple[JobState, float]]:
            details = (self._store.job_detail(job_id) for job_id in job_ids)
            return [
                (detail.state, detail.finished_at - detail.created_at)
                for detail in details
                if detail is not None and detail.state in ENDED and detail.finished_at
            ]

        for state, seconds in await self._db.run(read):
            self._metrics.job_ended(state, max(0.0, seconds))
