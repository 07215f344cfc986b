"""Leadership (actors/leadership.py) on its own: a lease on a clock the tests move and a lease
row the tests script, a scripted job store, a real `HeldJobs`, and a flush and callbacks that
record their calls. No Ray, no database."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from actors.held_jobs import HeldJobs
from actors.leadership import Leadership
from core.errors import StorageError
from core.jobs import JobLimits
from core.jobstore.records import UnfinishedJob
from core.lease import DispatchLease
from core.models import ImageOutcome
from core.tasks import BackgroundTasks

pytestmark = pytest.mark.timeout(10)

LEASE = 0.03  # seconds: a step sleeps a third of it before renewing, on the real clock


class Clock:
    """The lease's clock: moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LeaseRow:
    """The lease as the store keeps it; `holder` is whoever holds it now."""

    def __init__(self) -> None:
        self.holder: str | None = None
        self.released: list[str] = []

    async def hold(self, holder: str, _seconds: float) -> bool:
        if self.holder in (None, holder):
            self.holder = holder
        return self.holder == holder

    async def release(self, holder: str) -> None:
        self.released.append(holder)
        if self.holder == holder:
            self.holder = None


class Store:
    """The unfinished jobs on disk: each job's images as (url, settled) pairs."""

    def __init__(self) -> None:
        self.jobs: dict[int, list[bool]] = {}
        self.failing_loads = 0

    def unfinished_jobs(self) -> list[UnfinishedJob]:
        return [UnfinishedJob(job_id, None) for job_id in self.jobs]

    def job_images(self, job_id: int) -> tuple[list[str], bytearray]:
        if self.failing_loads:
            self.failing_loads -= 1
            raise StorageError("could not read a job's images: the job database did not answer")
        settled = self.jobs[job_id]
        return [f"http://a.test/{i}" for i in range(len(settled))], bytearray(settled)


class Inline:
    """The database thread, run inline."""

    async def run(self, function: Any, *args: Any) -> Any:
        return function(*args)


class Flush:
    def __init__(self, jobs: HeldJobs) -> None:
        self.jobs = jobs
        self.saved: list[list[ImageOutcome]] = []
        self.failing = False

    async def flush(self) -> int:
        if self.failing:
            raise StorageError("could not save results: the job database did not answer")
        batch = self.jobs.book.pending.take()
        self.saved.append(batch.outcomes)
        return len(batch.outcomes)


class Callbacks:
    def __init__(self) -> None:
        self.sweeps = 0

    async def for_jobs(self, job_ids: list[int] | None) -> None:
        assert job_ids is None, "Leadership sweeps every callback due"
        self.sweeps += 1


class Metrics:
    def failed_at_once(self, *_args: Any) -> None:
        pass


class Rig:
    """A Leadership in `holder`'s name and everything it was given."""

    def __init__(self, holder: str = "A", row: LeaseRow | None = None) -> None:
        self.clock = Clock()
        self.row = row or LeaseRow()
        self.lease = DispatchLease(holder, LEASE, self.row.hold, self.row.release, self.clock)
        self.jobs = HeldJobs(JobLimits(10, 1000, 3), Metrics())  # type: ignore[arg-type]
        self.store = Store()
        self.flush = Flush(self.jobs)
        self.callbacks = Callbacks()
        self.tasks = BackgroundTasks()
        self.leadership = Leadership(
            self.lease,
            self.jobs,
            self.store,  # type: ignore[arg-type]
            Inline(),  # type: ignore[arg-type]
            self.flush,  # type: ignore[arg-type]
            self.callbacks,  # type: ignore[arg-type]
            self.tasks,
            retry_pause=0.01,
        )

    async def settle(self) -> None:
        """Let the work a lease change started end."""
        await asyncio.gather(*self.tasks.running())


def run(scenario: Any) -> None:
    asyncio.run(scenario())


def test_recovery_with_the_lease_free_takes_it_and_loads_the_unfinished_jobs() -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.store.jobs = {1: [True, False], 2: [False]}
        await rig.leadership.recover()
        await rig.settle()
        assert rig.row.holder == "A"
        assert rig.leadership.loaded and rig.leadership.dispatching
        assert sorted(rig.jobs.book.jobs) == [1, 2]
        assert rig.jobs.book.waiting == 2  # the settled image is never dispatched again
        assert rig.callbacks.sweeps == 1
        assert rig.jobs.wake.is_set()

    run(scenario)


def test_recovery_while_another_holds_the_lease_stands_by_with_no_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        rig = Rig(row=LeaseRow())
        rig.row.holder = "B"
        rig.store.jobs = {1: [False]}
        await rig.leadership.recover()
        assert not rig.leadership.loaded and not rig.leadership.dispatching
        assert rig.jobs.book.jobs == {}
        assert rig.callbacks.sweeps == 0

    run(scenario)
    assert "another cluster holds the dispatch lease; standing by" in caplog.text


def test_a_failed_recovery_is_logged_and_tried_again_until_it_loads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.store.jobs = {1: [False], 2: [False]}
        rig.store.failing_loads = 2
        rig.leadership.start()
        await asyncio.wait_for(rig.leadership.recovered(), 1)
        assert rig.leadership.loaded
        assert sorted(rig.jobs.book.jobs) == [1, 2]

    with caplog.at_level(logging.ERROR):
        run(scenario)
    assert caplog.text.count("recovering the unfinished jobs failed; trying again") == 2


def test_recovered_answers_at_once_when_no_recovery_was_started() -> None:
    async def scenario() -> None:
        rig = Rig()
        await asyncio.wait_for(rig.leadership.recovered(), 0.1)
        assert not rig.leadership.loaded

    run(scenario)


def test_a_lost_lease_saves_what_settled_and_forgets_every_job() -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.store.jobs = {1: [False, False]}
        await rig.leadership.recover()
        rig.jobs.book.record(ImageOutcome(1, 0, 1.0, width=1, height=1))
        rig.row.holder = "B"  # A's lease expired and B took it
        await rig.leadership.step()
        assert not rig.leadership.loaded and not rig.leadership.dispatching
        assert rig.flush.saved == [[ImageOutcome(1, 0, 1.0, width=1, height=1)]]
        assert rig.jobs.book.jobs == {}

    run(scenario)


def test_a_step_down_whose_save_fails_still_forgets_the_jobs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.store.jobs = {1: [False]}
        await rig.leadership.recover()
        rig.flush.failing = True
        await rig.leadership.step_down("lost the dispatch lease to another cluster")
        assert rig.jobs.book.jobs == {}
        assert not rig.leadership.loaded

    run(scenario)
    assert "saving what settled before stepping down failed" in caplog.text


def test_a_lease_held_again_after_a_gap_reloads_the_jobs_from_the_store() -> None:
    """Another cluster may have had the lease in the gap: the jobs held are dropped and read
    again, so an image it settled meanwhile is not dispatched again."""

    async def scenario() -> None:
        rig = Rig()
        rig.store.jobs = {1: [False, False]}
        await rig.leadership.recover()
        held_before = rig.jobs.book
        rig.clock.now += LEASE * 2  # no renewal for two leases
        rig.store.jobs = {1: [True, False]}  # the other cluster settled image 0
        await rig.leadership.step()
        await rig.settle()
        assert rig.jobs.book is not held_before
        assert rig.leadership.loaded and rig.leadership.dispatching
        assert rig.jobs.book.waiting == 1
        assert rig.callbacks.sweeps == 2

    run(scenario)


def test_a_kept_lease_picks_up_jobs_recorded_elsewhere_and_callbacks_due() -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.store.jobs = {1: [False]}
        await rig.leadership.recover()
        await rig.settle()
        rig.jobs.wake.clear()
        # A standby recorded job 2; job 3's every image has a result (its finish is under way).
        rig.store.jobs = {1: [False], 2: [False, False], 3: [True]}
        await rig.leadership.step()
        await rig.settle()
        assert sorted(rig.jobs.book.jobs) == [1, 2]
        assert rig.callbacks.sweeps == 2
        assert rig.jobs.wake.is_set()

    run(scenario)


def test_a_kept_lease_without_jobs_loaded_takes_over_again() -> None:
    """A takeover that failed (the store went away) is tried again at the next renewal."""

    async def scenario() -> None:
        rig = Rig()
        rig.store.jobs = {1: [False]}
        rig.store.failing_loads = 1
        await rig.lease.renew()
        with pytest.raises(StorageError):
            await rig.leadership.lead()
        assert not rig.leadership.loaded and rig.jobs.book.jobs == {}
        await rig.leadership.step()
        await rig.settle()
        assert rig.leadership.loaded
        assert list(rig.jobs.book.jobs) == [1]

    run(scenario)


def test_dispatching_stops_when_the_lease_runs_out_unrenewed() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.leadership.recover()
        assert rig.leadership.dispatching
        rig.clock.now += LEASE * 2 / 3
        assert rig.leadership.loaded and not rig.leadership.dispatching

    run(scenario)


def test_shut_down_saves_gives_the_lease_up_and_stops_the_steps() -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.store.jobs = {1: [False]}
        await rig.leadership.recover()
        rig.jobs.book.record(ImageOutcome(1, 0, 1.0, width=1, height=1))
        assert await rig.leadership.shut_down() == 1
        assert rig.row.released == ["A"] and rig.row.holder is None
        assert not rig.leadership.dispatching
        await rig.leadership.step()
        assert rig.row.holder is None, "a shut-down tracker took the lease again"

    run(scenario)
