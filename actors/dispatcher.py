"""The Dispatcher: keeps the image workers fed with the held jobs' images while this tracker
dispatches. It sends fair batches to the workers with room, brings in the workers of nodes
that join once they answer, and requeues what a lost worker held. Ray's exceptions from the
workers stop here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError

from actors.held_jobs import HeldJobs
from actors.leadership import Leadership
from actors.metrics import ImageMetrics
from actors.pool import WorkerPool, WorkerSlot
from core.models import FailureReason, ImageTask
from core.tasks import BackgroundTasks

log = logging.getLogger(__name__)


class Dispatcher:
    """The dispatch loop's step and the node loop's step, and the workers' lifelines."""

    def __init__(
        self,
        jobs: HeldJobs,
        pool: WorkerPool,
        leadership: Leadership,
        image_metrics: ImageMetrics,
        tasks: BackgroundTasks,
        refresh_interval: float,
        nodes: Callable[[], list[dict[str, Any]]] = ray.nodes,
    ) -> None:
        self._jobs = jobs
        self._pool = pool
        self._leadership = leadership
        self._image_metrics = image_metrics
        self._tasks = tasks
        self._refresh_interval = refresh_interval
        self._nodes = nodes

    async def step(self) -> None:
        """One turn of the dispatch loop: once woken, a batch to every worker with room."""
        await self._leadership.recovered()
        await self._jobs.wake.wait()
        self._jobs.wake.clear()
        if not self._leadership.dispatching:
            return
        for worker in self._pool.freest_first():
            if not self._jobs.book.waiting:
                return
            batch = self._jobs.book.take_batch(worker.free, worker.in_flight)
            if batch:
                worker.in_flight.update((task.job_id, task.index) for task in batch)
                self._tasks.spawn(self._send(worker, batch))

    async def refresh_step(self) -> None:
        """One turn of the node loop: match the workers to the alive nodes, then wait."""
        nodes = await asyncio.to_thread(self._nodes)
        for worker in self._pool.refresh(nodes):
            self._tasks.spawn(self._warm_up(worker))
        await asyncio.sleep(self._refresh_interval)

    async def _send(self, worker: WorkerSlot, batch: list[ImageTask]) -> None:
        try:
            await worker.handle.accept.remote(batch)
        except (RayActorError, ObjectLostError):
            self._worker_lost(worker)

    async def _warm_up(self, worker: WorkerSlot) -> None:
        try:
            await worker.handle.ready.remote()
        except RayActorError:
            self._pool.lost(worker)
            return
        self._pool.mark_ready(worker)
        self._tasks.spawn(self._watch(worker))
        log.info(
            "image worker ready on node %s; capacity now %d", worker.node_id, self._pool.capacity
        )
        self._jobs.wake.set()

    async def _watch(self, worker: WorkerSlot) -> None:
        with contextlib.suppress(RayActorError, ObjectLostError):
            await worker.handle.lifeline.remote()
        self._worker_lost(worker)

    def _worker_lost(self, worker: WorkerSlot) -> None:
        failed, cancelled = self._jobs.book.worker_lost(self._pool.lost(worker))
        self._image_metrics.failed_at_once(FailureReason.CANCELLED, cancelled)
        self._image_metrics.failed_at_once(FailureReason.WORKER_LOST, len(failed))
        for outcome in failed:
            log.warning("image %d failed: %s", outcome.index, outcome.error,
                        extra={"job_id": outcome.job_id})  # fmt: skip
        self._jobs.wake.set()
