"""The JobTracker actor: owns job state, dispatches images fairly, persists every result.

It is a detached, named, restartable async actor. Everything it acknowledges is in the job
store first; on a restart it reloads the unfinished jobs and dispatches only their unsettled
images. The jobs' live state is `core.jobs.JobBook`; this actor adds Ray, the store and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError

from actors.callbacks import CallbackDelivery
from actors.metrics import ImageMetrics, TrackerMetrics
from actors.pool import WorkerPool, WorkerSlot
from core.callback import CallbackLimits, CallbackSender
from core.clients import RateLimiter
from core.errors import JobAlreadyFinished, NotDispatching, RateLimited, StorageError
from core.images.urlguard import AddressPolicy
from core.jobs import ActiveJob, JobBook, JobLimits, unknown_store_failures
from core.jobstore import JobStore, open_store
from core.jobstore.dbthread import DatabaseThread
from core.lease import DispatchLease, LeaseChange
from core.logs import use_json_logs
from core.models import (
    FailureReason,
    ImageOutcome,
    ImageTask,
    JobDetail,
    JobState,
    JobStatus,
    JobSubmission,
    JobView,
    ResultsPage,
)
from core.settings import Settings
from core.store_master import StoreMasterCache
from core.supervise import supervise

TRACKER_NAME = "job_tracker"
NAMESPACE = "image_service"
# Pause after a failed iteration of a background loop, or a failed recovery, before the next.
RETRY_PAUSE_SECONDS = 1.0

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class JobTracker:
    def __init__(self, settings: Settings) -> None:
        use_json_logs()
        self._settings = settings
        self._store: JobStore = open_store(settings)
        self._db = DatabaseThread()
        # The lease is renewed on a connection and a thread of its own, under a deadline
        # shorter than a lease third: no client read, job load or stalled call queued on the
        # store's thread can hold a renewal back past the point where dispatching must stop.
        self._lease_store = open_lease_store(settings)
        self._lease_lane = DatabaseThread("lease")
        self._store_master = StoreMasterCache(settings.store_master)
        self._book = self._new_book()
        self._submit_limiter = RateLimiter(settings.submit_rate, settings.submit_burst)
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._pool = WorkerPool(settings, ray.get_runtime_context().current_actor)
        self._helpers: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._image_metrics = ImageMetrics()
        self._metrics = TrackerMetrics()
        # The lease is held in the name of this cluster (its GCS address), so a tracker that Ray
        # restarts in the same cluster takes it back at once instead of waiting for it to expire.
        # The head node's id tells two clusters apart that share an address (two `make run`s on
        # their own hosts, both 127.0.0.1:6379).
        context = ray.get_runtime_context()
        self._lease = DispatchLease(
            f"{context.gcs_address} {context.get_node_id()}",
            settings.lease_seconds,
            hold=self._hold_lease,
            release=self._release_lease,
        )
        # True once the unfinished jobs are loaded under the lease held now.
        self._loaded = False
        self._lease_work: asyncio.Task[None] | None = None
        self._callbacks = CallbackDelivery(
            CallbackSender(
                CallbackLimits.from_settings(settings),
                AddressPolicy.from_entries(settings.allow_private_urls, settings.allowed_hosts),
            ),
            self._store,
            self._db,
            self._lease,
        )
        self._recovered = asyncio.get_running_loop().create_task(self._recover())
        self._background = [
            supervise("dispatch", self._dispatch_step, RETRY_PAUSE_SECONDS),
            supervise("flush", self._flush_step, RETRY_PAUSE_SECONDS),
            supervise("nodes", self._node_step, RETRY_PAUSE_SECONDS),
            supervise("metrics", self._metrics_step, RETRY_PAUSE_SECONDS),
            supervise("lease", self._lease_step, RETRY_PAUSE_SECONDS),
        ]

    def _new_book(self) -> JobBook:
        return JobBook(
            JobLimits(
                max_open_jobs_per_client=self._settings.max_open_jobs_per_client,
                max_queued_images=self._settings.max_queued_images,
                max_image_attempts=self._settings.max_image_attempts,
            )
        )

    # ---- API called by the Serve deployment -------------------------------------------------

    async def ping(self) -> str:
        """Answers once recovery is done, with the id of the node holding the database."""
        await self._recovered
        return str(ray.get_runtime_context().get_node_id())

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
        wait = self._submit_limiter.retry_after(caller, time.monotonic())
        if wait is not None:
            raise RateLimited(wait)
        await self._recovered
        # A repeated submission answers with its job even when the client is at its limit.
        repeated = await self._db.run(self._store.job_for_key, idempotency_key, request_hash)
        if repeated is not None:
            log.info("submission repeated: answered with its job", extra={"job_id": repeated})
            return repeated
        open_jobs, unsettled = 0, 0
        if not self._loaded:
            # The jobs are the dispatching cluster's, on disk: the limits count them there.
            open_jobs, unsettled = await self._db.run(self._store.admission_counts, client_id)
        with self._book.admission(client_id, submission.image_count, open_jobs, unsettled):
            return await self._record_job(submission, idempotency_key, client_id, request_hash)

    async def _record_job(
        self,
        submission: JobSubmission,
        idempotency_key: str | None,
        client_id: str | None,
        request_hash: str | None,
    ) -> int:
        known = await self._db.run(self._store_master.current)
        failed = unknown_store_failures(submission, known)
        job_id, created = await self._db.run(
            self._store.create_job, submission, idempotency_key, failed, client_id, request_hash
        )
        if not created:
            log.info("submission repeated: answered with its job", extra={"job_id": job_id})
            return job_id
        self._image_metrics.failed_at_once(FailureReason.UNKNOWN_STORE, len(failed))
        if len(failed) < submission.image_count:
            if self._loaded:
                self._activate(ActiveJob.submitted(job_id, submission, failed, client_id))
            # Otherwise the dispatching cluster's tracker picks it up from the store.
        elif self._loaded:
            self._keep(asyncio.create_task(self._callbacks.for_jobs([job_id])))
        # Otherwise the leader sends its callback with the others due.
        log.info(
            "job recorded",
            extra={"job_id": job_id, "images": submission.image_count, "state": "ongoing"},
        )
        return job_id

    async def status(self, job_id: int, client_id: str | None = None) -> JobView | None:
        """None for an unknown job, and for another client's job when `client_id` is given."""
        job = self._book.jobs.get(job_id)
        if job is not None and (client_id is None or job.client_id == client_id):
            return JobView(job_id=job_id, status=JobStatus.ONGOING)
        return await self._db.run(self._store.job_view, job_id, client_id)

    async def results(
        self, job_id: int, offset: int, limit: int, client_id: str | None = None
    ) -> ResultsPage | None:
        await self._flush()
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
        await self._recovered
        if job_id not in self._book.jobs or not self._dispatching:
            # One read by key: an unknown id, or a job that has ended, is answered from it.
            ended = await self.job_detail(job_id, client_id)
            if ended is None:
                return None
            if ended.state in (JobState.COMPLETED, JobState.FAILED):
                raise JobAlreadyFinished(f"job {job_id} has already {ended.state.value}")
            if not self._dispatching:
                raise NotDispatching(
                    "this service does not hold the dispatch lease now: the cluster that holds "
                    "it cancels"
                )
            # Recorded by a cluster standing by, and not picked up yet.
            await self._load_unfinished(only_unsettled=True)
        job = self._book.jobs.get(job_id)
        if job is not None and client_id is not None and job.client_id != client_id:
            return None
        # A job whose every image has settled is over, whether or not that is saved yet.
        if job is not None and not job.cancelled and job.unsettled > 0:
            in_flight = self._pool.in_flight_of(job.job_id)
            dropped = self._book.cancel(job, in_flight)
            self._image_metrics.failed_at_once(FailureReason.CANCELLED, dropped)
            log.info(
                "job cancelled: %d queued images dropped, %d in flight settling",
                dropped,
                len(in_flight),
                extra={"job_id": job.job_id, "state": "cancelling"},
            )
        # The cancel is saved after every outcome that came before it: those stores finished.
        await self._flush()
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
            self._book.record(outcome)
        self._wake.set()

    async def shutdown(self) -> int:
        """Stop dispatching and put everything settled so far on disk; returns images saved."""
        self._stopping = True
        saved = await self._flush()
        self._loaded = False
        await self._lease.release()
        return saved

    # ---- diagnostics, for operators and the fault tests ---------------------------------------

    async def diagnostics(self) -> dict[str, Any]:
        """What the tracker holds now, and its process id."""
        return {
            "active_jobs": len(self._book.jobs),
            "queued_images": self._book.waiting,
            "in_flight_images": self._pool.in_flight,
            "capacity": self._pool.capacity,
            "nodes": len(self._pool.workers()),
            "pid": os.getpid(),
            "rate_limit_buckets": len(self._submit_limiter),
            "leading": self._lease.held,
            "dispatching": self._dispatching,
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
        return self._book.with_live_progress(detail, in_flight)

    def _activate(self, job: ActiveJob) -> None:
        cancelled = self._book.activate(job)
        self._image_metrics.failed_at_once(FailureReason.CANCELLED, cancelled)
        self._wake.set()

    async def _recover(self) -> None:
        """Take the dispatch lease if no other cluster holds it, and then load the unfinished
        jobs. A failure is retried, never kept as the answer. Without the lease the tracker
        answers reads and records submissions; the lease step takes over later if it can."""
        while True:
            try:
                change = await self._lease.renew()
                if self._lease.held:
                    await self._lead()
                elif change is LeaseChange.STANDING_BY:
                    log.warning("another cluster holds the dispatch lease; standing by")
                return
            except Exception:
                log.exception("recovering the unfinished jobs failed; trying again")
                await asyncio.sleep(RETRY_PAUSE_SECONDS)

    async def _hold_lease(self, holder: str, seconds: float) -> bool:
        return await self._lease_lane.run(self._lease_store.hold_lease, holder, seconds)

    async def _release_lease(self, holder: str) -> None:
        await self._lease_lane.run(self._lease_store.release_lease, holder)

    @property
    def _dispatching(self) -> bool:
        return self._loaded and not self._stopping and self._lease.dispatching

    async def _lead(self) -> None:
        """Become the dispatching tracker: load every unfinished job, one at a time (a restart
        holds no more than the jobs themselves), and deliver the callbacks due. A load that
        fails leaves nothing half loaded: the next lease step tries again."""
        book = self._book = self._new_book()
        try:
            resumed = await self._load_unfinished(only_unsettled=False)
        except BaseException:
            if self._book is book:  # not already replaced by a later load
                self._book = self._new_book()
            raise
        if self._book is not book:
            return  # a later load replaced this one
        self._loaded = True
        if resumed:
            log.info("resumed %d unfinished jobs", resumed)
        self._keep(asyncio.create_task(self._callbacks.for_jobs(None)))
        self._wake.set()

    async def _step_down(self, reason: str) -> None:
        """The jobs held here may be another cluster's now: what settled is saved if it can be
        (each image keeps its first result), and the jobs are forgotten whatever happens, to
        be read from the store from now on."""
        self._loaded = False
        log.error("%s; dispatching stops", reason)
        try:
            await self._flush()
        except StorageError as exc:
            log.error("saving what settled before stepping down failed: %s", exc)
        finally:
            self._book = self._new_book()

    async def _lease_step(self) -> None:
        """Renew the lease, or take it when its holder has let it expire. The work a change
        calls for runs beside the renewals, never in their way."""
        await self._recovered
        await asyncio.sleep(self._lease.renewal_interval)
        if self._stopping:
            return
        change = await self._lease.renew()
        if change is LeaseChange.LOST:
            await self._step_down("lost the dispatch lease to another cluster")
        elif change is LeaseChange.TAKEN:
            if self._lease_work is not None and not self._lease_work.done():
                # A load under way read jobs before the gap: they may be stale.
                self._lease_work.cancel()
            if self._loaded or self._book.jobs:
                # Held again after a gap: another cluster may have changed these jobs meanwhile.
                await self._step_down("the dispatch lease lapsed before it was renewed")
            log.warning("took the dispatch lease")
            self._start(self._lead, replace=True)
        elif change is LeaseChange.KEPT:
            self._wake.set()  # dispatching may have paused while the lease could not be renewed
            self._start(self._lead if not self._loaded else self._pick_up)

    def _start(self, step: Callable[[], Coroutine[Any, Any, None]], replace: bool = False) -> None:
        """Run a step of the lease's work in the background, one at a time (`replace`: start
        it even if one, cancelled, has not ended yet)."""
        if replace or self._lease_work is None or self._lease_work.done():
            self._lease_work = asyncio.create_task(step())
            self._keep(self._lease_work)

    async def _pick_up(self) -> None:
        """Callbacks and jobs another cluster's tracker left: callbacks due (it stopped before
        sending them), jobs it recorded while standing by."""
        await self._callbacks.for_jobs(None)
        picked = await self._load_unfinished(only_unsettled=True)
        if picked:
            log.info("picked up %d jobs recorded by another cluster", picked)

    async def _load_unfinished(self, only_unsettled: bool) -> int:
        """Activate the unfinished jobs not held yet; returns how many. With `only_unsettled`,
        a job whose every image has a result is left alone: its finish is under way."""
        loaded = 0
        for stored in await self._db.run(self._store.unfinished_jobs):
            if stored.job_id in self._book.jobs:
                continue
            urls, settled = await self._db.run(self._store.job_images, stored.job_id)
            # Checked again after the await: a submission may have activated it meanwhile.
            if stored.job_id in self._book.jobs or (only_unsettled and all(settled)):
                continue
            self._activate(
                ActiveJob(
                    stored.job_id,
                    urls,
                    settled,
                    stored.client_id,
                    started=stored.started,
                    cancelled=stored.cancelled,
                )
            )
            loaded += 1
        return loaded

    async def _dispatch_step(self) -> None:
        await self._recovered
        await self._wake.wait()
        self._wake.clear()
        if not self._dispatching:
            return
        for worker in self._pool.freest_first():
            if not self._book.waiting:
                return
            batch = self._book.take_batch(worker.free, worker.in_flight)
            if batch:
                worker.in_flight.update((task.job_id, task.index) for task in batch)
                self._keep(asyncio.create_task(self._send(worker, batch)))

    async def _send(self, worker: WorkerSlot, batch: list[ImageTask]) -> None:
        try:
            await worker.handle.accept.remote(batch)
        except (RayActorError, ObjectLostError):
            self._worker_lost(worker)

    async def _watch(self, worker: WorkerSlot) -> None:
        with contextlib.suppress(RayActorError, ObjectLostError):
            await worker.handle.lifeline.remote()
        self._worker_lost(worker)

    def _worker_lost(self, worker: WorkerSlot) -> None:
        failed, cancelled = self._book.worker_lost(self._pool.lost(worker))
        self._image_metrics.failed_at_once(FailureReason.CANCELLED, cancelled)
        self._image_metrics.failed_at_once(FailureReason.WORKER_LOST, len(failed))
        for outcome in failed:
            log.warning("image %d failed: %s", outcome.index, outcome.error,
                        extra={"job_id": outcome.job_id})  # fmt: skip
        self._wake.set()

    async def _flush_step(self) -> None:
        await asyncio.sleep(self._settings.flush_interval)
        await self._flush()

    async def _flush(self) -> int:
        async with self._flush_lock:
            batch = self._book.pending.take()
            if not batch:
                return 0
            try:
                unstorable = await self._db.run(
                    self._store.save_outcomes,
                    batch.outcomes,
                    batch.finished,
                    batch.started,
                    batch.cancels,
                )
            except BaseException:
                self._book.pending.restore(batch)
                raise
            for outcome in unstorable:
                log.error("the result of image %d could not be stored; it failed instead",
                          outcome.index, extra={"job_id": outcome.job_id})  # fmt: skip
            self._image_metrics.failed_at_once(FailureReason.INTERNAL, len(unstorable))
            self._book.finished(batch.finished)
            for job_id in batch.finished:
                log.info("job finished", extra={"job_id": job_id})
            if batch.finished:
                self._keep(asyncio.create_task(self._callbacks.for_jobs(batch.finished)))
            return len(batch.outcomes)

    async def _node_step(self) -> None:
        nodes = await asyncio.to_thread(ray.nodes)
        for worker in self._pool.refresh(nodes):
            self._keep(asyncio.create_task(self._warm_up(worker)))
        await asyncio.sleep(self._settings.node_refresh_interval)

    async def _metrics_step(self) -> None:
        await asyncio.sleep(self._settings.metrics_interval)
        self._metrics.in_flight.set(self._pool.in_flight)
        self._metrics.queue_depth.set(self._book.waiting)
        counts = await self._db.run(self._store.job_counts)
        for state in JobState:
            self._metrics.jobs.set(counts.get(state, 0), tags={"state": state.value})

    def _keep(self, task: asyncio.Task[None]) -> None:
        """Hold a reference until the task ends (the loop itself keeps only weak ones), and log
        its failure: nothing else awaits it. Callbacks a failed task left due are sent by the
        lease step's next sweep."""
        self._helpers.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._helpers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a background task failed", exc_info=task.exception())

    async def _warm_up(self, worker: WorkerSlot) -> None:
        try:
            await worker.handle.ready.remote()
        except RayActorError:
            self._pool.lost(worker)
            return
        self._pool.mark_ready(worker)
        self._keep(asyncio.create_task(self._watch(worker)))
        log.info(
            "image worker ready on node %s; capacity now %d", worker.node_id, self._pool.capacity
        )
        self._wake.set()


def open_lease_store(settings: Settings) -> JobStore:
    """The job store as the lease's renewals use it: one connection, a deadline of a sixth of
    a lease, and every renewal tried (there is no queue of them to spare)."""
    return open_store(
        settings, timeout=lease_call_timeout(settings), max_connections=1, probe_interval=0
    )


def lease_call_timeout(settings: Settings) -> float:
    """The deadline of a lease renewal: half a lease third, so that a renewal that overruns
    leaves the next its chance before dispatching must stop."""
    return min(settings.database_timeout, settings.lease_seconds / 6)


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
