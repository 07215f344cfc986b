"""The Flusher (actors/flusher.py) over a scripted store: a failed save loses and reorders
nothing; a saved finish forgets the job and sends its callback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.flusher import Flusher
from actors.held_jobs import HeldJobs
from core.errors import StorageError
from core.jobs import ActiveJob, JobLimits
from core.models import ImageOutcome
from core.tasks import BackgroundTasks

pytestmark = pytest.mark.timeout(10)


class Store:
    def __init__(self) -> None:
        self.saves: list[tuple[list[int], list[int]]] = []  # (image indexes, finished jobs)
        self.failing = False

    def save_outcomes(
        self, outcomes: list[ImageOutcome], finished: list[int], *_rest: Any
    ) -> list[ImageOutcome]:
        if self.failing:
            raise StorageError("could not save results: the job database did not answer")
        self.saves.append(([outcome.index for outcome in outcomes], list(finished)))
        return []


class Inline:
    async def run(self, function: Any, *args: Any) -> Any:
        return function(*args)


class Callbacks:
    def __init__(self) -> None:
        self.asked: list[list[int] | None] = []

    async def for_jobs(self, job_ids: list[int] | None) -> None:
        self.asked.append(job_ids)


class Metrics:
    def failed_at_once(self, *_args: Any) -> None:
        pass


def done(index: int) -> ImageOutcome:
    return ImageOutcome(1, index, 1.0, width=1, height=1)


def test_a_failed_save_is_saved_again_first_then_the_job_is_forgotten() -> None:
    async def scenario() -> None:
        jobs = HeldJobs(JobLimits(10, 1000, 3), Metrics())  # type: ignore[arg-type]
        store, callbacks, tasks = Store(), Callbacks(), BackgroundTasks()
        flusher = Flusher(
            jobs,
            store,  # type: ignore[arg-type]
            Inline(),  # type: ignore[arg-type]
            callbacks,  # type: ignore[arg-type]
            Metrics(),  # type: ignore[arg-type]
            tasks,
            interval=0,
        )
        jobs.activate(ActiveJob(1, ["http://a.test/0", "http://a.test/1"], bytearray(2)))
        jobs.book.record(done(0))
        store.failing = True
        with pytest.raises(StorageError):
            await flusher.flush()
        store.failing = False
        jobs.book.record(done(1))
        assert await flusher.flush() == 2
        await asyncio.gather(*tasks.running())
        assert store.saves == [([0, 1], [1])]
        assert jobs.book.jobs == {}
        assert callbacks.asked == [[1]]
        assert await flusher.flush() == 0

    asyncio.run(scenario())
