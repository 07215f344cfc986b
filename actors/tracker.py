"""The JobTracker actor: owns job state, dispatches images fairly, persists every result.

It is a detached, named, restartable async actor. Everything it acknowledges is in SQLite
first; on a restart it reloads the unfinished jobs and dispatches only their unsettled images.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError

from actors.metrics import ImageMetrics, TrackerMetrics
from actors.pool import ImageKey, WorkerPool, WorkerSlot
from core.callback import CallbackLimits, CallbackSender
from core.clients import RateLimiter
from core.errors import JobAlreadyFinished, RateLimited, ServiceBusy, TooManyOpenJobs
from core.logs import use_json_logs
from core.models import (
    IMAGE_CANCELLED,
    FailureReason,
    ImageOutcome,
    ImageTask,
    JobDetail,
    JobState,
    JobStatus,
    JobSubmission,
    JobView,
    ResultsPage,
    status_payload,
)
from core.pending import PendingWrites
from core.scheduler import FairQueue
from core.settings import Settings
from core.storage import DueCallback, JobStore, StorageError
from core.store_master import StoreMasterCache
from core.supervise import supervise
from core.urlguard import AddressPolicy

TRACKER_NAME = "job_tracker"
NAMESPACE = "image_service"
UNKNOWN_STORE = "store_id not in store master"
NODE_REFRESH_SECONDS = 2.0
METRICS_SECONDS = 2.0
# Pause after a failed iteration of a background loop, or a failed recovery, before the next.
RETRY_PAUSE_SECONDS = 1.0

log = logging.getLogger(__name__)


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

    def settle(self, index: int) -> bool:
        """Mark an image settled; False if it already was (a duplicate report)."""
        if self.settled[index]:
            return False
        self.settled[index] = 1
        self.unsettled -= 1
        return True

    def unsettled_indexes(self) -> list[int]:
        return [index for index, flag in enumerate(self.settled) if not flag]


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


@ray.remote(num_cpus=0)
class JobTracker:
    def __init__(self, settings: Settings) -> None:
        use_json_logs()
        self._settings = settings
        self._store = JobStore(settings.database_path)
        # SQLite is driven from this one thread only: writes stay ordered, the loop never blocks.
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobstore")
        self._store_master = StoreMasterCache(settings.store_master)
        self._queue = FairQueue()
        # Images that were in flight on a worker that died, with how often that happened: at
        # most one of them runs on a worker at a time, so one image that kills its worker
        # cannot take the others down with it again and again.
        self._deaths: dict[ImageKey, int] = {}
        self._suspects: deque[ImageKey] = deque()
        self._jobs: dict[int, ActiveJob] = {}
        self._pending = PendingWrites()
        # Submissions between their admission and their job's activation, by client id
        # (None: no API keys), with their images: counted against the limits meanwhile.
        self._admitted: dict[str | None, int] = {}
        self._admitted_images = 0
        self._submit_limiter = RateLimiter(settings.submit_rate, settings.submit_burst)
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._pool = WorkerPool(settings, ray.get_runtime_context().current_actor)
        self._helpers: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._image_metrics = ImageMetrics()
        self._metrics = TrackerMetrics()
        self._callbacks = CallbackSender(
            CallbackLimits(
                settings.callback_attempts, settings.callback_backoff, settings.callback_timeout
            ),
            AddressPolicy.from_entries(settings.allow_private_urls, settings.allowed_hosts),
        )
        self._recovered = asyncio.get_running_loop().create_task(self._recover())
        self._background = [
            supervise("dispatch", self._dispatch_step, RETRY_PAUSE_SECONDS),
            supervise("flush", self._flush_step, RETRY_PAUSE_SECONDS),
            supervise("nodes", self._node_step, RETRY_PAUSE_SECONDS),
            supervise("metrics", self._metrics_step, RETRY_PAUSE_SECONDS),
        ]

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
        repeated = await self._in_db_thread(self._store.job_for_key, idempotency_key, request_hash)
        if repeated is not None:
            log.info("submission repeated: answered with its job", extra={"job_id": repeated})
            return int(repeated)
        with self._admission(client_id, submission.image_count):
            return await self._record_job(submission, idempotency_key, client_id, request_hash)

    async def _record_job(
        self,
        submission: JobSubmission,
        idempotency_key: str | None,
        client_id: str | None,
        request_hash: str | None,
    ) -> int:
        known = await self._in_db_thread(self._store_master.current)
        failed = {}
        index = 0
        for visit in submission.visits:
            for _url in visit.image_urls:
                if visit.store_id not in known:
                    failed[index] = UNKNOWN_STORE
                index += 1
        job_id, created = await self._in_db_thread(
            self._store.create_job, submission, idempotency_key, failed, client_id, request_hash
        )
        if not created:
            log.info("submission repeated: answered with its job", extra={"job_id": job_id})
            return job_id
        self._image_metrics.failed_at_once(FailureReason.UNKNOWN_STORE, len(failed))
        if len(failed) < submission.image_count:
            urls = [url for visit in submission.visits for url in visit.image_urls]
            settled = bytearray(len(urls))
            for failed_index in failed:
                settled[failed_index] = 1
            self._activate(ActiveJob(job_id, urls, settled, client_id))
        else:
            self._keep(asyncio.create_task(self._send_callbacks([job_id])))
        log.info(
            "job recorded",
            extra={"job_id": job_id, "images": submission.image_count, "state": "ongoing"},
        )
        return job_id

    async def status(self, job_id: int, client_id: str | None = None) -> JobView | None:
        """None for an unknown job, and for another client's job when `client_id` is given."""
        job = self._jobs.get(job_id)
        if job is not None and (client_id is None or job.client_id == client_id):
            return JobView(job_id=job_id, status=JobStatus.ONGOING)
        return await self._in_db_thread(self._store.job_view, job_id, client_id)

    async def results(
        self, job_id: int, offset: int, limit: int, client_id: str | None = None
    ) -> ResultsPage | None:
        await self._flush()
        view = await self.status(job_id, client_id)
        if view is None:
            return None
        total, rows = await self._in_db_thread(self._store.results_page, job_id, offset, limit)
        return ResultsPage(job=view, total=total, offset=offset, results=tuple(rows))

    async def job_detail(self, job_id: int, client_id: str | None = None) -> JobDetail | None:
        """Lifecycle, progress and times; None for an unknown job or another client's."""
        detail = await self._in_db_thread(self._store.job_detail, job_id, client_id)
        return None if detail is None else self._with_live_progress(detail)

    async def jobs(
        self, client_id: str | None, offset: int, limit: int
    ) -> tuple[int, list[JobDetail]]:
        """Recent jobs, newest first, and how many there are in all."""
        total, details = await self._in_db_thread(self._store.recent_jobs, client_id, offset, limit)
        return total, [self._with_live_progress(detail) for detail in details]

    async def cancel(self, job_id: int, client_id: str | None = None) -> JobDetail | None:
        """Stop dispatching the job's images; the queued ones settle as cancelled at once, the
        ones in flight settle as they finish, then the job ends as failed. Answers once the
        cancel is on disk. None for an unknown job; `JobAlreadyFinished` for an ended one."""
        await self._recovered
        job = self._jobs.get(job_id)
        if job is not None and client_id is not None and job.client_id != client_id:
            return None
        # A job whose every image has settled is over, whether or not that is saved yet.
        if job is not None and not job.cancelled and job.unsettled > 0:
            self._cancel_queued(job)
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
            self._record(outcome)
        self._wake.set()

    async def stats(self) -> dict[str, Any]:
        """For operators and tests: what the tracker holds now."""
        return {
            "active_jobs": len(self._jobs),
            "queued_images": len(self._queue) + len(self._suspects),
            "in_flight_images": self._pool.in_flight,
            "capacity": self._pool.capacity,
            "nodes": len(self._pool.workers()),
            "pid": os.getpid(),
            "rate_limit_buckets": len(self._submit_limiter),
        }

    async def shutdown(self) -> int:
        """Stop dispatching and put everything settled so far on disk; returns images saved."""
        self._stopping = True
        return await self._flush()

    async def worker_pids(self) -> dict[str, list[int]]:
        """Process ids of the image workers by node (for operators and fault tests)."""
        pids: dict[str, list[int]] = {}
        for worker in self._pool.workers():
            pids.setdefault(worker.node_id, []).append(await worker.handle.pid.remote())
        return pids

    # ---- internals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _admission(self, client_id: str | None, images: int) -> Iterator[None]:
        """Hold a place for a submission against the open-jobs and queued-images limits until
        its job is active. The checks and the hold happen with no await between them, so
        concurrent submissions cannot all pass one check before any of them is counted."""
        if client_id is not None:
            limit = self._settings.max_open_jobs_per_client
            open_jobs = self._admitted.get(client_id, 0) + sum(
                1 for job in self._jobs.values() if job.client_id == client_id
            )
            if open_jobs >= limit:
                raise TooManyOpenJobs(f"{open_jobs} jobs are still open; at most {limit} may be")
        unsettled = self._admitted_images + sum(job.unsettled for job in self._jobs.values())
        if unsettled + images > self._settings.max_queued_images:
            raise ServiceBusy(
                f"the service holds {unsettled} unsettled images and takes at most"
                f" {self._settings.max_queued_images}; retry once some jobs have finished"
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

    def _cancel_queued(self, job: ActiveJob) -> None:
        job.cancelled = True
        self._queue.drop_job(job.job_id)
        in_flight = self._pool.in_flight_of(job.job_id)
        self._pending.cancel(job.job_id, time.time())
        queued = [index for index in job.unsettled_indexes() if index not in in_flight]
        self._settle_cancelled(job, queued)
        log.info(
            "job cancelled: %d queued images dropped, %d in flight settling",
            len(queued),
            len(in_flight),
            extra={"job_id": job.job_id, "state": "cancelling"},
        )

    def _settle_cancelled(self, job: ActiveJob, indexes: list[int]) -> None:
        now = time.time()
        for index in indexes:
            self._record(cancelled_outcome(job.job_id, index, now))
        self._image_metrics.failed_at_once(FailureReason.CANCELLED, len(indexes))

    def _with_live_progress(self, detail: JobDetail) -> JobDetail:
        """Counts from disk plus what settled since the last flush, and the images in flight."""
        if detail.state not in (JobState.ONGOING, JobState.CANCELLING):
            return detail
        unsaved = [o for o in self._pending.outcomes if o.job_id == detail.job_id]
        failed = sum(1 for o in unsaved if o.error is not None)
        return replace(
            detail,
            done=detail.done + len(unsaved) - failed,
            failed=detail.failed + failed,
            in_flight=len(self._pool.in_flight_of(detail.job_id)),
        )

    def _activate(self, job: ActiveJob) -> None:
        self._jobs[job.job_id] = job
        if job.cancelled:
            # Recovered while cancelling: its images in flight went down with the old tracker,
            # so nothing is left to wait for.
            self._settle_cancelled(job, job.unsettled_indexes())
        if job.unsettled == 0:
            if job.job_id not in self._pending.finished:
                self._pending.finished.append(job.job_id)
            return
        self._queue.add(job.job_id, job.unsettled_indexes())
        self._wake.set()

    async def _recover(self) -> None:
        """Load the unfinished jobs, one at a time (a restart holds no more than the jobs
        themselves), and the callbacks due. A failure is retried, never kept as the answer."""
        while True:
            try:
                unfinished = await self._in_db_thread(self._store.unfinished_jobs)
                for stored in unfinished:
                    if stored.job_id in self._jobs:
                        continue  # loaded by an attempt that failed later on
                    urls, settled = await self._in_db_thread(self._store.job_images, stored.job_id)
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
                due = await self._in_db_thread(self._store.callbacks_due, None)
            except Exception:
                log.exception("recovering the unfinished jobs failed; trying again")
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
                continue
            if unfinished:
                log.info("resumed %d unfinished jobs", len(unfinished))
            self._keep(asyncio.create_task(self._deliver_all(due)))
            return

    async def _dispatch_step(self) -> None:
        await self._recovered
        await self._wake.wait()
        self._wake.clear()
        if self._stopping:
            return
        for worker in self._pool.freest_first():
            if not (self._queue or self._suspects):
                return
            batch = self._take_batch(worker)
            if batch:
                self._keep(asyncio.create_task(self._send(worker, batch)))

    def _take_batch(self, worker: WorkerSlot) -> list[ImageTask]:
        """Up to the worker's free capacity of images, taken fairly across jobs, led by at
        most one image whose worker died under it (a suspect) if the worker holds none."""
        batch: list[ImageTask] = []
        if self._suspects and not any(key in self._deaths for key in worker.in_flight):
            while worker.free > 0 and self._suspects:
                if self._dispatch(worker, self._suspects.popleft(), batch):
                    break
        while worker.free > 0 and (taken := self._queue.take()) is not None:
            self._dispatch(worker, taken, batch)
        return batch

    def _dispatch(self, worker: WorkerSlot, key: ImageKey, batch: list[ImageTask]) -> bool:
        """Add the image to the worker's batch unless it has settled meanwhile (by a worker
        thought lost); True if added."""
        job_id, index = key
        job = self._jobs.get(job_id)
        if job is None or job.settled[index]:
            return False
        if not job.started:
            job.started = True
            self._pending.started.append((job_id, time.time()))
        worker.in_flight.add(key)
        batch.append(ImageTask(job_id, index, job.urls[index]))
        return True

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
        limit = self._settings.max_image_attempts
        for key in self._pool.lost(worker):
            job_id, index = key
            job = self._jobs.get(job_id)
            if job is None or job.settled[index]:
                continue
            if job.cancelled:
                self._settle_cancelled(job, [index])
                continue
            deaths = self._deaths[key] = self._deaths.get(key, 0) + 1
            if deaths >= limit:
                self._record(worker_lost_outcome(job_id, index, deaths))
                self._image_metrics.failed_at_once(FailureReason.WORKER_LOST, 1)
                log.warning("image %d failed: its worker died %d times", index, deaths,
                            extra={"job_id": job_id})  # fmt: skip
            else:
                self._suspects.append(key)
        self._wake.set()

    def _record(self, outcome: ImageOutcome) -> None:
        key = (outcome.job_id, outcome.index)
        self._deaths.pop(key, None)
        job = self._jobs.get(outcome.job_id)
        if job is None or not job.settle(outcome.index):
            return
        self._pending.outcomes.append(outcome)
        if job.unsettled == 0:
            self._pending.finished.append(job.job_id)

    async def _flush_step(self) -> None:
        await asyncio.sleep(self._settings.flush_interval)
        await self._flush()

    async def _flush(self) -> int:
        async with self._flush_lock:
            batch = self._pending.take()
            if not batch:
                return 0
            try:
                unstorable = await self._in_db_thread(
                    self._store.save_outcomes,
                    batch.outcomes,
                    batch.finished,
                    batch.started,
                    batch.cancels,
                )
            except BaseException:
                self._pending.restore(batch)
                raise
            for outcome in unstorable:
                log.error("the result of image %d could not be stored; it failed instead",
                          outcome.index, extra={"job_id": outcome.job_id})  # fmt: skip
            self._image_metrics.failed_at_once(FailureReason.INTERNAL, len(unstorable))
            for job_id in batch.finished:
                del self._jobs[job_id]
                self._queue.drop_job(job_id)
                log.info("job finished", extra={"job_id": job_id})
            if batch.finished:
                self._keep(asyncio.create_task(self._send_callbacks(batch.finished)))
            return len(batch.outcomes)

    async def _send_callbacks(self, job_ids: list[int]) -> None:
        due = await self._in_db_thread(self._store.callbacks_due, job_ids)
        await self._deliver_all(due)

    async def _deliver_all(self, due: list[DueCallback]) -> None:
        await asyncio.gather(*(self._deliver(callback) for callback in due))

    async def _deliver(self, callback: DueCallback) -> None:
        context = {"job_id": callback.job_id, "state": callback.view.status.value}
        attempts, failure = await self._callbacks.deliver(
            callback.url, status_payload(callback.view)
        )
        if failure is None:
            log.info("callback delivered", extra={**context, "attempts": attempts})
        else:
            log.warning(
                "callback not delivered; giving up",
                extra={**context, "attempts": attempts, "error": failure},
            )
        try:
            await self._in_db_thread(self._store.mark_callback_done, callback.job_id, time.time())
        except StorageError as exc:
            log.error("recording the callback failed: %s", exc, extra=context)

    async def _node_step(self) -> None:
        nodes = await asyncio.to_thread(ray.nodes)
        for worker in self._pool.refresh(nodes):
            self._keep(asyncio.create_task(self._warm_up(worker)))
        await asyncio.sleep(NODE_REFRESH_SECONDS)

    async def _metrics_step(self) -> None:
        await asyncio.sleep(METRICS_SECONDS)
        self._metrics.in_flight.set(self._pool.in_flight)
        self._metrics.queue_depth.set(len(self._queue) + len(self._suspects))
        counts = await self._in_db_thread(self._store.job_counts)
        for state in JobState:
            self._metrics.jobs.set(counts.get(state, 0), tags={"state": state.value})

    def _keep(self, task: asyncio.Task[None]) -> None:
        """Hold a reference until the task ends: the loop itself keeps only weak ones."""
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    async def _warm_up(self, worker: WorkerSlot) -> None:
        try:
            await worker.handle.pid.remote()
        except RayActorError:
            self._pool.lost(worker)
            return
        self._pool.mark_ready(worker)
        self._keep(asyncio.create_task(self._watch(worker)))
        log.info(
            "image worker ready on node %s; capacity now %d", worker.node_id, self._pool.capacity
        )
        self._wake.set()

    async def _in_db_thread(self, function: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, partial(function, *args))


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
