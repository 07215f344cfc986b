"""The Dispatcher (actors/dispatcher.py) without Ray: a real `WorkerPool` whose image workers
are stand-ins (their `ready`, `accept` and `lifeline` calls scripted), a real `HeldJobs`, and
a leadership that says whether the tracker dispatches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ray.exceptions import RayActorError

import actors.pool
from actors.dispatcher import Dispatcher
from actors.held_jobs import HeldJobs
from actors.pool import WorkerPool
from core.jobs import ActiveJob, JobLimits
from core.models import ImageTask
from core.settings import Settings
from core.tasks import BackgroundTasks

pytestmark = pytest.mark.timeout(10)

NODE = {"NodeID": "ab" * 28, "Alive": True, "Resources": {"CPU": 1.0, "image_slots": 4.0}}


class Call:
    """One of a worker's methods as a Ray handle shows it: `.remote(...)` gives an awaitable."""

    def __init__(self, method: Any) -> None:
        self._method = method

    def remote(self, *args: Any) -> Any:
        return self._method(*args)


class Worker:
    """An image worker's handle: answers `ready` once `answering` is set, records batches;
    `die()` ends it."""

    def __init__(self, answering: asyncio.Event) -> None:
        self.batches: list[list[ImageTask]] = []
        self._answering = answering
        self._dead = asyncio.Event()
        self.ready = Call(self._ready)
        self.accept = Call(self._accept)
        self.lifeline = Call(self._lifeline)

    def die(self) -> None:
        self._dead.set()

    async def _ready(self) -> None:
        await self._answering.wait()
        if self._dead.is_set():
            raise RayActorError()

    async def _accept(self, batch: list[ImageTask]) -> None:
        if self._dead.is_set():
            raise RayActorError()
        self.batches.append(batch)

    async def _lifeline(self) -> None:
        await self._dead.wait()
        raise RayActorError()


class Workers:
    """Stands for `ImageWorker`: every worker started, in order."""

    def __init__(self) -> None:
        self.started: list[Worker] = []
        self.answering = asyncio.Event()
        self.answering.set()

    def options(self, **_options: Any) -> Workers:
        return self

    def remote(self, *_args: Any) -> Worker:
        self.started.append(Worker(self.answering))
        return self.started[-1]


class Leading:
    def __init__(self) -> None:
        self.dispatching = True

    async def recovered(self) -> None:
        pass


class Metrics:
    def __init__(self) -> None:
        self.failed: list[tuple[Any, int]] = []

    def failed_at_once(self, reason: Any, count: int) -> None:
        self.failed.append((reason, count))


class Rig:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.workers = Workers()
        monkeypatch.setattr(actors.pool, "ImageWorker", self.workers)
        settings = Settings.from_env({"IMAGE_SERVICE_FETCH_AHEAD": "0"})
        self.pool = WorkerPool(settings, tracker=None)  # type: ignore[arg-type]
        self.jobs = HeldJobs(JobLimits(10, 1000, 3), Metrics())  # type: ignore[arg-type]
        self.leadership = Leading()
        self.tasks = BackgroundTasks()
        self.dispatcher = Dispatcher(
            self.jobs,
            self.pool,
            self.leadership,  # type: ignore[arg-type]
            Metrics(),  # type: ignore[arg-type]
            self.tasks,
            refresh_interval=0,
            nodes=lambda: [NODE],
        )

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    def activate(self, job_id: int, images: int) -> None:
        urls = [f"http://a.test/{job_id}/{i}" for i in range(images)]
        self.jobs.activate(ActiveJob(job_id, urls, bytearray(images)))


def test_a_new_node_s_worker_takes_work_once_it_has_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        rig.activate(1, 6)
        rig.workers.answering.clear()
        await rig.dispatcher.refresh_step()
        [worker] = rig.workers.started
        rig.jobs.wake.set()
        await rig.dispatcher.step()
        await rig.settle()
        assert worker.batches == [], "work went to a worker before it answered"
        rig.workers.answering.set()
        await rig.settle()
        assert rig.pool.capacity == 4
        await rig.dispatcher.step()
        await rig.settle()
        assert [[task.index for task in batch] for batch in worker.batches] == [[0, 1, 2, 3]]
        assert rig.jobs.book.waiting == 2

    asyncio.run(scenario())


def test_nothing_is_dispatched_while_the_tracker_does_not_dispatch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        await rig.dispatcher.refresh_step()
        await rig.settle()
        rig.leadership.dispatching = False
        rig.activate(1, 2)
        await rig.dispatcher.step()
        await rig.settle()
        assert rig.workers.started[0].batches == []
        assert rig.jobs.book.waiting == 2 and not rig.jobs.wake.is_set()

    asyncio.run(scenario())


def test_the_images_of_a_worker_that_dies_are_dispatched_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        await rig.dispatcher.refresh_step()
        await rig.settle()
        rig.activate(1, 2)
        await rig.dispatcher.step()
        await rig.settle()
        [worker] = rig.workers.started
        assert rig.pool.in_flight == 2
        worker.die()
        await rig.settle()
        assert rig.pool.workers() == [] and rig.pool.in_flight == 0
        assert rig.jobs.wake.is_set()
        await rig.dispatcher.refresh_step()  # a worker in its place
        await rig.settle()
        await rig.dispatcher.step()
        await rig.settle()
        replacement = rig.workers.started[1]
        # One image at a time after a death: an image that kills its worker takes no other.
        assert [task.index for batch in replacement.batches for task in batch] == [0]

    asyncio.run(scenario())
