"""The JobTracker actor: owns job state, dispatches images fairly, persists every result.

It is a detached, named, restartable async actor. Everything it acknowledges is in SQLite
first; on a restart it reloads the unfinished jobs and dispatches only their unsettled images.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray.exceptions import ObjectLostError, RayActorError

from actors.pool import WorkerPool, WorkerSlot
from core.clients import TooManyOpenJobs
from core.models import (
    ImageOutcome,
    ImageTask,
    JobStatus,
    JobSubmission,
    JobView,
    ResultsPage,
)
from core.scheduler import FairQueue
from core.settings import Settings
from core.storage import JobStore, StorageError
from core.store_master import load_store_master

TRACKER_NAME = "job_tracker"
NAMESPACE = "image_service"
UNKNOWN_STORE = "store_id not in store master"
NODE_REFRESH_SECONDS = 2.0

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(eq=False)
class ActiveJob:
    job_id: int
    urls: list[str]
    settled: bytearray  # one flag per image: settled images are never dispatched again
    client_id: str | None = None
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


class StoreMasterCache:
    """The known store ids, reloaded when the file changes (checked at most once per submit)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime: float | None = None
        self._ids: frozenset[str] = frozenset()

    def current(self) -> frozenset[str]:
        mtime = self._path.stat().st_mtime
        if mtime != self._mtime:
            self._ids = load_store_master(self._path)
            self._mtime = mtime
        return self._ids


@ray.remote(num_cpus=0)
class JobTracker:
    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=logging.INFO)
        self._settings = settings
        self._store = JobStore(settings.database_path)
        # SQLite is driven from this one thread only: writes stay ordered, the loop never blocks.
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobstore")
        self._store_master = StoreMasterCache(settings.store_master)
        self._queue = FairQueue()
        self._jobs: dict[int, ActiveJob] = {}
        self._unsaved: list[ImageOutcome] = []
        self._fully_settled: list[int] = []
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._pool = WorkerPool(settings, ray.get_runtime_context().current_actor)
        self._helpers: set[asyncio.Task[None]] = set()
        self._stopping = False
        loop = asyncio.get_running_loop()
        self._recovered = loop.create_task(self._recover())
        self._background = [
            loop.create_task(self._dispatch_loop()),
            loop.create_task(self._flush_loop()),
            loop.create_task(self._node_loop()),
        ]

    # ---- API called by the Serve deployment -------------------------------------------------

    async def ping(self) -> str:
        """Answers once recovery is done, with the id of the node holding the database."""
        await self._recovered
        return str(ray.get_runtime_context().get_node_id())

    async def submit(
        self, submission: JobSubmission, submission_key: str | None, client_id: str | None = None
    ) -> int:
        await self._recovered
        if client_id is not None:
            open_jobs = sum(1 for job in self._jobs.values() if job.client_id == client_id)
            if open_jobs >= self._settings.max_open_jobs_per_client:
                raise TooManyOpenJobs(
                    f"{open_jobs} jobs are still open; at most"
                    f" {self._settings.max_open_jobs_per_client} may be"
                )
        known = await self._in_db_thread(self._store_master.current)
        failed = {}
        index = 0
        for visit in submission.visits:
            for _url in visit.image_urls:
                if visit.store_id not in known:
                    failed[index] = UNKNOWN_STORE
                index += 1
        job_id, created = await self._in_db_thread(
            self._store.create_job, submission, submission_key, failed, client_id
        )
        if created and len(failed) < submission.image_count:
            urls = [url for visit in submission.visits for url in visit.image_urls]
            settled = bytearray(len(urls))
            for failed_index in failed:
                settled[failed_index] = 1
            self._activate(ActiveJob(job_id, urls, settled, client_id))
        log.info("job %d recorded: %d images", job_id, submission.image_count)
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

    async def report(self, worker_key: str, outcomes: list[ImageOutcome]) -> None:
        """Called by image workers with the outcomes of images they settled."""
        worker = self._pool.by_key(worker_key)
        for outcome in outcomes:
            if worker is not None:
                worker.in_flight.discard((outcome.job_id, outcome.index))
            self._record(outcome)
        self._wake.set()

    async def shutdown(self) -> int:
        """Stop dispatching and put everything settled so far on disk; returns images saved."""
        self._stopping = True
        return await self._flush()

    async def worker_pids(self) -> dict[str, int]:
        """Process ids of the image workers by node (for operators and fault tests)."""
        return {worker.node_id: await worker.handle.pid.remote() for worker in self._pool.workers()}

    async def stats(self) -> dict[str, Any]:
        return {
            "active_jobs": len(self._jobs),
            "queued_images": len(self._queue),
            "in_flight_images": self._pool.in_flight,
            "capacity": self._pool.capacity,
            "nodes": len(self._pool.workers()),
            "pid": os.getpid(),
        }

    # ---- internals ---------------------------------------------------------------------------

    def _activate(self, job: ActiveJob) -> None:
        self._jobs[job.job_id] = job
        if job.unsettled == 0:
            self._fully_settled.append(job.job_id)
            return
        self._queue.add(job.job_id, (i for i, flag in enumerate(job.settled) if not flag))
        self._wake.set()

    async def _recover(self) -> None:
        unfinished = await self._in_db_thread(self._store.unfinished_jobs)
        for stored in unfinished:
            settled = bytearray(len(stored.images))
            for index in stored.settled:
                settled[index] = 1
            urls = [image.url for image in stored.images]
            self._activate(ActiveJob(stored.job_id, urls, settled, stored.client_id))
        if unfinished:
            log.info("resumed %d unfinished jobs", len(unfinished))

    async def _dispatch_loop(self) -> None:
        await self._recovered
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and not self._stopping:
                worker = self._pool.most_free()
                if worker is None:
                    break
                batch = self._take_batch(worker)
                if batch:
                    self._keep(asyncio.create_task(self._send(worker, batch)))

    def _take_batch(self, worker: WorkerSlot) -> list[ImageTask]:
        """Up to the worker's free capacity of images, taken fairly across jobs."""
        batch: list[ImageTask] = []
        while worker.free > 0 and (taken := self._queue.take()) is not None:
            job_id, index = taken
            job = self._jobs.get(job_id)
            if job is None or job.settled[index]:
                continue  # settled meanwhile by a worker thought lost: nothing to redo
            worker.in_flight.add(taken)
            batch.append(ImageTask(job_id, index, job.urls[index]))
        return batch

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
        for job_id, index in self._pool.lost(worker):
            job = self._jobs.get(job_id)
            if job is not None and not job.settled[index]:
                self._queue.requeue(job_id, index)
        self._wake.set()

    def _record(self, outcome: ImageOutcome) -> None:
        job = self._jobs.get(outcome.job_id)
        if job is None or not job.settle(outcome.index):
            return
        self._unsaved.append(outcome)
        if job.unsettled == 0:
            self._fully_settled.append(job.job_id)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.flush_interval)
            try:
                await self._flush()
            except StorageError as exc:
                log.error("saving results failed, will retry: %s", exc)

    async def _flush(self) -> int:
        async with self._flush_lock:
            batch, self._unsaved = self._unsaved, []
            finished, self._fully_settled = self._fully_settled, []
            if not batch and not finished:
                return 0
            try:
                await self._in_db_thread(self._store.save_outcomes, batch, finished)
            except StorageError:
                self._unsaved[:0] = batch
                self._fully_settled[:0] = finished
                raise
            for job_id in finished:
                del self._jobs[job_id]
                self._queue.drop_job(job_id)
                log.info("job %d finished", job_id)
            return len(batch)

    async def _node_loop(self) -> None:
        while True:
            nodes = await asyncio.to_thread(ray.nodes)
            for worker in self._pool.refresh(nodes):
                self._keep(asyncio.create_task(self._warm_up(worker)))
            await asyncio.sleep(NODE_REFRESH_SECONDS)

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
