"""The tracker's side of autoscaling: it asks Ray's autoscaler for the `image_slots` its
backlog could use (`core.demand`) and retires the image workers of worker nodes left idle, so
that the autoscaler sees them idle and removes them. The one module here that calls Ray's
autoscaler SDK; both calls are passed in, so a test drives the step without Ray."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import ray
from ray.autoscaler.sdk import request_resources

from actors.held_jobs import HeldJobs
from actors.leadership import Leadership
from actors.pool import WorkerPool
from core.demand import Bundle, IdleNodes, bundles, wanted_slots
from core.settings import Settings

log = logging.getLogger(__name__)

# How often the demand is looked at: the autoscaler itself looks every 5 s by default.
STEP_SECONDS = 1.0


def ask_ray(request: list[Bundle]) -> None:
    request_resources(bundles=request)


def stop_worker(handle: ray.actor.ActorHandle) -> None:
    ray.kill(handle, no_restart=True)


class Autoscaling:
    """One step a second, while `AUTOSCALE_MAX_SLOTS` is set: the request follows the backlog
    (sent when it changes, dropped to nothing when the backlog is gone or this tracker stops
    dispatching); worker nodes idle for `AUTOSCALE_RETIRE_SECONDS` while nothing waits have
    their workers stopped, and any backlog brings workers back on the nodes still there."""

    def __init__(
        self,
        settings: Settings,
        jobs: HeldJobs,
        pool: WorkerPool,
        leadership: Leadership,
        request: Callable[[list[Bundle]], None] = ask_ray,
        stop: Callable[[ray.actor.ActorHandle], None] = stop_worker,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._jobs = jobs
        self._pool = pool
        self._leadership = leadership
        self._request = request
        self._stop = stop
        self._clock = clock
        self._idle = IdleNodes()
        self.requested: int | None = None  # slots asked for last; None before the first ask

    async def step(self) -> None:
        if self._settings.autoscale_max_slots > 0:
            await self._ask()
            self._retire_or_recall()
        await asyncio.sleep(STEP_SECONDS)

    async def _ask(self) -> None:
        waiting = self._jobs.book.waiting if self._leadership.dispatching else 0
        in_flight = self._pool.in_flight if self._leadership.dispatching else 0
        wanted = wanted_slots(
            waiting, in_flight, self._settings.fetch_ahead, self._settings.autoscale_max_slots
        )
        if wanted != self.requested:
            await asyncio.to_thread(self._request, bundles(wanted))
            log.info(
                "asked the autoscaler for %d image slots (%d images waiting, %d in flight)",
                wanted, waiting, in_flight,
            )  # fmt: skip
            self.requested = wanted

    def _retire_or_recall(self) -> None:
        now = self._clock()
        if self._jobs.book.waiting:
            if self._pool.recall():
                log.info("images wait: image workers start again on the retired nodes")
            self._idle = IdleNodes()
            return
        self._idle.update(self._pool.held_by_worker_node(), now)
        for node_id in self._idle.due(now, self._settings.autoscale_retire_seconds):
            self._idle.forget(node_id)
            workers = self._pool.retire(node_id)
            for worker in workers:
                self._stop(worker.handle)
            log.info(
                "node %s idle for %.0f s with no image waiting: its %d image workers stopped, "
                "its image_slots free for the autoscaler",
                node_id, self._settings.autoscale_retire_seconds, len(workers),
            )  # fmt: skip
