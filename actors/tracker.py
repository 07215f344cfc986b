"""The JobTracker actor: owns job state, dispatches images fairly, persists every result.

It is a detached, named, restartable async actor. Everything it acknowledges is in the job
store first; on a restart it reloads the unfinished jobs and dispatches only their unsettled
images. `Tracker` answers the API over parts passed in (`TrackerParts`: the jobs held, the
lease's leadership, dispatch, the flush, the store); `JobTracker`, the actor, builds them
from the settings and runs their loops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import ray

from actors.parts import TrackerParts, tracker_parts
from core.errors import JobAlreadyFinished, NotDispatching, RateLimited
from core.jobs import ActiveJob, unknown_store_failures
from core.logs import use_json_logs
from core.models import (
    FailureReason,
    ImageOutcome,
    JobDetail,
    JobState,
    JobStatus,
    JobSubmission,
    JobView,
    ResultsPage,
)
from core.settings import Settings
from core.supervise import supervise

TRACKER_NAME = "job_tracker"
NAMESPACE = "image_service"

log = logging.getLogger(__name__)


class Tracker:
    """The tracker's API, as the Serve deployment and the image workers call it, over parts
    passed in. Nothing runs until `_run` (the actor's constructor calls it), so a test drives
    the parts' steps itself."""

    def __init__(self, settings: Settings, parts: TrackerParts) -> None:
        self._settings = settings
        self._parts = parts
        self._store = parts.store
        self._db = parts.db
        self._jobs = parts.jobs
        self._pool = parts.pool
        self._leadership = parts.leadership
        self._image_metrics = parts.image_metrics
        self._loops: list[asyncio.Task[None]] = []

    def _run(self) -> None:
        """Recover, then run the background loops, each under a guard that logs a failed
        iteration and goes on."""
        parts = self._parts
        parts.leadership.start()
        self._loops = [
            supervise("dispatch", parts.dispatcher.step),
            supervise("flush", parts.flusher.step),
            supervise("nodes", parts.dispatcher.refresh_step),
            supervise("metrics", self._metrics_step),
            supervise("lease", parts.leadership.step),
            supervise("autoscaling", parts.autoscaling.step),
        ]

    # ---- API called by the Serve deployment -------------------------------------------------

    async def submit(
        self,
        submission: JobSubmission,
        idempotency_key: str | None,
        client_id: str | None = None,
        request_hash: str | None = None,
        caller: str = "",
    ) -> int:
        """Record the job and start it; a known `idempotency_key` returns its job instead
        (`IdempotencyConflict` if `request_hash` differs from the one it was recorded with).
        `caller` (the client id, or the caller's address without API keys) is rate limited
        here, in the one tracker, so the limit holds however many API replicas there are."""
        wait = self._parts.submit_limiter.retry_after(caller, time.monotonic())
        if wait is not None:
            raise RateLimited(wait)
        await self._leadership.recovered()
        # A repeated submission answers with its job even when the client is at its limit.
        repeated = await self._db.run(self._store.job_for_key, idempotency_key, request_hash)
        if repeated is not None:
            log.info("submission repeated: answered with its job", extra={"job_id": repeated})
            return repeated
        open_jobs, unsettled = 0, 0
        if not self._leadership.loaded:
            # The jobs are the dispatching cluster's, on disk: the limits count them there.
            open_jobs, unsettled = await self._db.run(self._store.admission_counts, client_id)
        with self._jobs.book.admission(client_id, submission.image_count, open_jobs, unsettled):
            return await self._record_job(submission, idempotency_key, client_id, request_hash)

    async def _record_job(
        self,
        submission: JobSubmission,
        idempotency_key: str | None,
        client_id: str | None,
        request_hash: str | None,
    ) -> int:
        known = await self._db.run(self._parts.store_master.current)
        failed = unknown_store_failures(submission, known)
        job_id, created = await self._db.run(
            self._store.create_job, submission, idempotency_key, failed, client_id, request_hash
        )
        if not created:
            log.info("submission repeated: answered with its job", extra={"job_id": job_id})
            return job_id
        self._image_metrics.failed_at_once(FailureReason.UNKNOWN_STORE, len(failed))
        if len(failed) < submission.image_count:
            if self._leadership.loaded:
                self._jobs.activate(ActiveJob.submitted(job_id, submission, failed, client_id))
            # Otherwise the dispatching cluster's tracker picks it up from the store.
        else:
            # Every image failed at once (unknown stores): the job ended as it was recorded.
            self._parts.metrics.job_ended(JobState.FAILED, 0.0)
            if self._leadership.loaded:
                self._parts.tasks.spawn(self._parts.callbacks.for_jobs([job_id]))
            # Otherwise the leader sends its callback with the others due.
        log.info(
            "job recorded",
            extra={"job_id": job_id, "images": submission.image_count, "state": "ongoing"},
        )
        return job_id

    async def status(self, job_id: int, client_id: str | None = None) -> JobView | None:
        """None for an unknown job, and for another client's job when `client_id` is given."""
        job = self._jobs.book.jobs.get(job_id)
        if job is not None and (client_id is None or job.client_id == client_id):
            return JobView(job_id=job_id, status=JobStatus.ONGOING)
        return await self._db.run(self._store.job_view, job_id, client_id)

    async def results(
        self, job_id: int, offset: int, limit: int, client_id: str | None = None
    ) -> ResultsPage | None:
        await self._parts.flusher.flush()
        view = await self.status(job_id, client_id)
        if view is None:
            return None
        total, rows = await self._db.run(self._store.results_page, job_id, offset, limit)
        return ResultsPage(job=view, total=total, offset=offset, results=tuple(rows))

    async def job_detail(self, job_id: int, client_id: str | None = None) -> JobDetail | None:
        """Lifecycle, progress and times; None for an unknown job or another client's."""
        detail = await self._db.run(self._store.job_detail, job_id, client_id)
        return None if detail is None else self._with_live_progress(detail)

    async def jobs(
        self, client_id: str | None, offset: int, limit: int
    ) -> tuple[int, list[JobDetail]]:
        """Recent jobs, newest first, and how many there are in all."""
        total, details = await self._db.run(self._store.recent_jobs, client_id, offset, limit)
        return total, [self._with_live_progress(detail) for detail in details]

    async def cancel(self, job_id: int, client_id: str | None = None) -> JobDetail | None:
        """Stop dispatching the job's images; the queued ones settle as cancelled at once, the
        ones in flight settle as they finish, then the job ends as failed. Answers once the
        cancel is on disk. None for an unknown job; `JobAlreadyFinished` for an ended one."""
        await self._leadership.recovered()
        if job_id not in self._jobs.book.jobs or not self._leadership.dispatching:
            # One read by key: an unknown id, or a job that has ended, is answered from it.
            ended = await self.job_detail(job_id, client_id)
            if ended is None:
                return None
            if ended.state in (JobState.COMPLETED, JobState.FAILED):
                raise JobAlreadyFinished(f"job {job_id} has already {ended.state.value}")
            if not self._leadership.dispatching:
                raise NotDispatching(
                    "this service does not hold the dispatch lease now: the cluster that holds "
                    "it cancels"
                )
            # Recorded by a cluster standing by, and not picked up yet.
            await self._leadership.load_unfinished(only_unsettled=True)
        job = self._jobs.book.jobs.get(job_id)
        if job is not None and client_id is not None and job.client_id != client_id:
            return None
        # A job whose every image has settled is over, whether or not that is saved yet.
        if job is not None and not job.cancelled and job.unsettled > 0:
            in_flight = self._pool.in_flight_of(job.job_id)
            dropped = self._jobs.book.cancel(job, in_flight)
            self._image_metrics.failed_at_once(FailureReason.CANCELLED, dropped)
            log.info(
                "job cancelled: %d queued images dropped, %d in flight settling",
                dropped,
                len(in_flight),
                extra={"job_id": job.job_id, "state": "cancelling"},
            )
        # The cancel is saved after every outcome that came before it: those stores finished.
        await self._parts.flusher.flush()
        detail = await self.job_detail(job_id, client_id)
        if detail is not None and detail.state in (JobState.COMPLETED, JobState.FAILED):
            raise JobAlreadyFinished(f"job {job_id} has already {detail.state.value}")
        return detail

    async def report(self, worker_key: str, outcomes: list[ImageOutcome]) -> None:
        """Called by image workers with the outcomes of images they settled."""
        worker = self._pool.by_key(worker_key)
        for outcome in outcomes:
            if worker is not None:
                worker.in_flight.discard((outcome.job_id, outcome.index))
            self._jobs.book.record(outcome)
        if self._jobs.book.pending.finished:
            self._parts.flusher.job_ended()
        self._jobs.wake.set()

    async def shutdown(self) -> int:
        """Stop dispatching and put everything settled so far on disk; returns images saved."""
        return await self._leadership.shut_down()

    # ---- diagnostics, for operators and the fault tests ---------------------------------------

    async def diagnostics(self) -> dict[str, Any]:
        """What the tracker holds now, and its process id."""
        return {
            "active_jobs": len(self._jobs.book.jobs),
            "queued_images": self._jobs.book.waiting,
            "in_flight_images": self._pool.in_flight,
            "capacity": self._pool.capacity,
            "nodes": len(self._pool.workers()),
            "pid": os.getpid(),
            "rate_limit_buckets": len(self._parts.submit_limiter),
            "leading": self._leadership.lease.held,
            "dispatching": self._leadership.dispatching,
            "requested_slots": self._parts.autoscaling.requested,
        }

    async def diagnostic_worker_pids(self) -> dict[str, list[int]]:
        """Process ids of the image workers by node."""
        pids: dict[str, list[int]] = {}
        for worker in self._pool.workers():
            pids.setdefault(worker.node_id, []).append(await worker.handle.pid.remote())
        return pids

    # ---- internals ---------------------------------------------------------------------------

    def _with_live_progress(self, detail: JobDetail) -> JobDetail:
        in_flight = len(self._pool.in_flight_of(detail.job_id))
        return self._jobs.book.with_live_progress(detail, in_flight)

    async def _metrics_step(self) -> None:
        await asyncio.sleep(self._settings.metrics_interval)
        metrics, book = self._parts.metrics, self._jobs.book
        metrics.in_flight.set(self._pool.in_flight)
        metrics.queue_depth.set(book.waiting)
        metrics.oldest_queued_seconds.set(book.oldest_waiting(time.monotonic()))
        metrics.flush_backlog.set(self._parts.flusher.backlog)
        metrics.dispatch_lease.set(int(self._leadership.lease.dispatching))
        counts = await self._db.run(self._store.job_counts)
        for state in JobState:
            metrics.jobs.set(counts.get(state, 0), tags={"state": state.value})


@ray.remote(num_cpus=0)
class JobTracker(Tracker):
    """The cluster's one tracker as a Ray actor: builds its parts from the settings, then
    recovers and runs."""

    def __init__(self, settings: Settings) -> None:
        use_json_logs()
        super().__init__(settings, tracker_parts(settings))
        self._run()

    async def ping(self) -> str:
        """Answers once recovery is done, with the id of the node holding the database."""
        await self._leadership.recovered()
        return str(ray.get_runtime_context().get_node_id())


def tracker_handle(settings: Settings) -> ray.actor.ActorHandle:
    """The cluster's one JobTracker, created on first use, pinned to the head node (beside its
    database), restarted by Ray after a crash with calls in progress retried, not failed."""
    return JobTracker.options(  # type: ignore[attr-defined]
        name=TRACKER_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=-1,
        resources={"node:__internal_head__": 0.001},
    ).remote(settings)
