"""The Flusher (actors/flusher.py) over a scripted store: a failed save loses and reorders
nothing; a saved finish forgets the job, sends its callback and times it; every flush is
timed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.flusher import Flusher
from actors.held_jobs import HeldJobs
from core.errors import StorageError
from core.jobs import ActiveJob, JobLimits
from core.models import ImageOutcome, JobDetail, JobState
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

    def job_detail(self, job_id: int) -> JobDetail | None:
        """Job 1 completed 90 s after it was submitted; job 2 was cancelled; 3 is unknown."""
        states = {1: (JobState.COMPLETED, 90.0), 2: (JobState.CANCELLED, 4.5)}
        if job_id not in states:
            return None
        state, took = states[job_id]
        return JobDetail(job_id, state, 2, 1, 1, 1000.0, 1000.0, 1000.0 + took, None, ())


class Inline:
    async def run(self, function: Any, *args: Any) -> Any:
        return function(*args)


class Callbacks:
    def __init__(self) -> None:
        self.asked: list[list[int] | None] = []

    async def for_jobs(self, job_ids: list[int] | None) -> None:
        self.asked.append(job_ids)


class Metrics:
    def __init__(self) -> None:
        self.flushes: list[float] = []
        self.ended: list[tuple[JobState, float]] = []

    def failed_at_once(self, *_args: Any) -> None:
        pass

    def flushed(self, seconds: float) -> None:
        self.flushes.append(seconds)

    def job_ended(self, state: JobState, seconds: float) -> None:
        self.ended.append((state, seconds))


def done(index: int) -> ImageOutcome:
    return ImageOutcome(1, index, 1.0, width=1, height=1)


def test_a_failed_save_is_saved_again_first_then_the_job_is_forgotten() -> None:
    async def scenario() -> None:
        jobs = HeldJobs(JobLimits(10, 1000, 3), Metrics())  # type: ignore[arg-type]
        store, callbacks, tasks, metrics = Store(), Callbacks(), BackgroundTasks(), Metrics()
        flusher = Flusher(
            jobs,
            store,  # type: ignore[arg-type]
            Inline(),  # type: ignore[arg-type]
            callbacks,  # type: ignore[arg-type]
            Metrics(),  # type: ignore[arg-type]
            metrics,  # type: ignore[arg-type]
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
        # Two flushes went to the store, the failed one too; the empty one did not.
        assert len(metrics.flushes) == 2
        assert metrics.ended == [(JobState.COMPLETED, 90.0)]

    asyncio.run(scenario())


def test_each_job_ended_in_a_flush_is_timed_once_with_its_final_state() -> None:
    async def scenario() -> Metrics:
        jobs = HeldJobs(JobLimits(10, 1000, 3), Metrics())  # type: ignore[arg-type]
        metrics, tasks = Metrics(), BackgroundTasks()
        flusher = Flusher(
            jobs,
            Store(),  # type: ignore[arg-type]
            Inline(),  # type: ignore[arg-type]
            Callbacks(),  # type: ignore[arg-type]
            Metrics(),  # type: ignore[arg-type]
            metrics,  # type: ignore[arg-type]
            tasks,
            interval=0,
        )
        for job_id in (1, 2, 3, 4):
            jobs.activate(ActiveJob(job_id, ["http://a.test/0"], bytearray(1)))
        for job_id in (1, 2, 3):  # job 3 is not in the store; job 4 has not ended
            jobs.book.record(ImageOutcome(job_id, 0, 1.0, width=1, height=1))
        await flusher.flush()
        await asyncio.gather(*tasks.running())
        await flusher.flush()
        await asyncio.gather(*tasks.running())
        return metrics

    metrics = asyncio.run(scenario())
    assert metrics.ended == [(JobState.COMPLETED, 90.0), (JobState.CANCELLED, 4.5)]
    assert len(metrics.flushes) == 1


class Hanging:
    """A job store thread whose call hangs until released, as a frozen database's does until
    its deadline (5 s, and each probe after it)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def run(self, function: Any, *args: Any) -> Any:
        self.entered.set()
        await self.release.wait()
        raise StorageError("could not save results: the job database did not answer")


def test_the_flush_backlog_counts_the_images_whose_save_is_still_under_way() -> None:
    """`ray_image_service_flush_backlog`: "settled images waiting to be written to the job
    store". A flush takes the batch out of the pending writes before its store call; while a
    call to a frozen database waits its deadline, those images are still unwritten, and the
    "Flush backlog" panel, which "grows while the job store fails", must not drop to 0."""

    async def scenario() -> tuple[int, int]:
        jobs = HeldJobs(JobLimits(10, 1000, 3), Metrics())  # type: ignore[arg-type]
        db = Hanging()
        flusher = Flusher(
            jobs,
            Store(),  # type: ignore[arg-type]
            db,  # type: ignore[arg-type]
            Callbacks(),  # type: ignore[arg-type]
            Metrics(),  # type: ignore[arg-type]
            Metrics(),  # type: ignore[arg-type]
            BackgroundTasks(),
            interval=0,
        )
        jobs.activate(ActiveJob(1, [f"http://a.test/{n}" for n in range(5)], bytearray(5)))
        for index in range(5):
            jobs.book.record(done(index))
        before = flusher.backlog
        flushing = asyncio.create_task(flusher.flush())
        await db.entered.wait()
        during = flusher.backlog  # what the metrics loop reads now
        db.release.set()
        with pytest.raises(StorageError):
            await flushing
        return before, during, flusher.backlog

    before, during, after = asyncio.run(scenario())
    assert before == 5
    assert during == 5, "the backlog gauge reads 0 while the 5 images' save hangs"
    assert after == 5  # put back in front, counted once


def test_a_job_that_ends_is_flushed_at_once_not_at_the_end_of_the_interval() -> None:
    """A small job's client waits for its final write: an interval-long wait (0.2 s by
    default) was a third of a 10-image job's whole time."""

    async def scenario() -> tuple[list[tuple[list[int], list[int]]], float]:
        jobs = HeldJobs(JobLimits(10, 1000, 3), Metrics())  # type: ignore[arg-type]
        store = Store()
        flusher = Flusher(
            jobs,
            store,  # type: ignore[arg-type]
            Inline(),  # type: ignore[arg-type]
            Callbacks(),  # type: ignore[arg-type]
            Metrics(),  # type: ignore[arg-type]
            Metrics(),  # type: ignore[arg-type]
            BackgroundTasks(),
            interval=60,
        )
        jobs.activate(ActiveJob(1, ["http://a.test/0"], bytearray(1)))
        stepping = asyncio.create_task(flusher.step())
        await asyncio.sleep(0.05)
        assert store.saves == []  # nothing ended: the step waits out its interval
        start = asyncio.get_running_loop().time()
        jobs.book.record(done(0))
        flusher.job_ended()
        await asyncio.wait_for(stepping, 5)
        return store.saves, asyncio.get_running_loop().time() - start

    saves, took = asyncio.run(scenario())
    assert saves == [([0], [1])]
    assert took < 1
