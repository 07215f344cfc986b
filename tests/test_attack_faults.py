"""Adversarial tests of the "cluster faults" work: deadlines, the breaker's probes, the lease
lane and the status source, without Ray and without a PostgreSQL server. Each one fails on
the code it was written against, for the reason its docstring gives."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from actors.parts import TrackerParts, open_lease_store
from core.errors import DatabaseUnavailable
from core.jobstore.deadline import StoreDeadlines, Watchdog
from core.jobstore.sqlite.store import SqliteStore
from core.lease import LeaseChange
from core.models import ImageOutcome, JobSubmission, Visit
from core.settings import Settings
from harness.service import free_port
from service.status_source import StatusSource
from tests.test_lease import LEASE, one_image_job, settings_for, tracker_with

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---- the breaker's probes ---------------------------------------------------------------------


def test_while_a_probe_is_still_waiting_no_second_probe_goes_through() -> None:
    """core/jobstore/deadline.py: "one call at a time goes through as a probe". A probe to a frozen
    server waits its whole deadline (5 s); admit() lets another through every second all the
    same, so five probes wait on the frozen server at once (more than the pool's 4
    connections), each costing its caller the full deadline."""
    clock = Clock()
    deadlines = StoreDeadlines(5.0, probe_interval=1.0, clock=clock, watchdog=Watchdog(clock))
    deadlines.down()
    clock.now += 1.0
    deadlines.admit()  # the probe: now waiting on the frozen database, up to 5 s
    clock.now += 1.0
    with pytest.raises(DatabaseUnavailable):
        deadlines.admit()  # the first probe has not come back: this one must not go through


def test_sqlite_create_job_can_be_the_probe_that_finds_the_database_back(
    tmp_path: Path,
) -> None:
    """SqliteStore.create_job calls self.job_for_key, itself wrapped by database_errors: the
    outer admit() takes the probe slot, the inner admit() is refused. So while the store is
    taken as down, every create_job fails at once without touching the (answering) database,
    even when it is the one call let through."""
    clock = Clock()
    store = SqliteStore(tmp_path / "jobs.sqlite3", timeout=1.0)
    store._calls.deadlines = StoreDeadlines(1.0, clock=clock, watchdog=Watchdog(clock))
    store._calls.deadlines.down()  # one call overran; the database answers again since
    clock.now += 1.0  # past the probe interval: the next call is the probe
    job_id, created = store.create_job(one_image_job(), None, {})
    assert created and store.job_view(job_id) is not None
    store.close()


# ---- SQLite deadlines ---------------------------------------------------------------------------


def test_sqlite_recording_a_large_job_gets_the_per_image_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: every job store call "on both backends" has a deadline, "recording a job 0.2 ms
    more per image". PostgreSQL adds it (CREATE_SECONDS_PER_IMAGE); SQLite's create_job runs
    under the flat store deadline (database_errors passes no timeout), so a large job (100,000
    images, the most allowed, with its synchronous=FULL commit on a slow disk) is cut off and
    trips the breaker for every other call, where PostgreSQL would have given it 20 s more."""
    given: list[float] = []
    real_call = StoreDeadlines.call

    def spy(self: StoreDeadlines, abort: Any, timeout: float | None = None) -> Any:
        given.append(self.timeout if timeout is None else timeout)
        return real_call(self, abort, timeout)

    store = SqliteStore(tmp_path / "jobs.sqlite3", timeout=0.5)
    monkeypatch.setattr(StoreDeadlines, "call", spy)
    urls = tuple(f"https://images.example.com/S1/photo-{i:06d}.jpg" for i in range(100_000))
    store.create_job(JobSubmission((Visit("S1", "2025-01-01", urls),)), "big", {})
    monkeypatch.undo()
    store.close()
    assert max(given) >= 0.5 + 100_000 * 0.0002, f"deadlines given: {given}"


def test_a_sqlite_call_past_its_deadline_is_cut_off_even_between_two_rows(
    tmp_path: Path,
) -> None:
    """SQLite's interrupt() stops only a statement running at that moment; one that lands while
    executemany is between two rows (most of the time: a row's step takes microseconds and the
    watchdog needs the GIL to call it) is a no-op, reset by the next step. The call then runs
    on to its end, however long, and answers as if in time: the deadline bounds nothing.
    Measured with the real watchdog: a 100,000-image create_job under a 0.1 s deadline ran
    0.18 s, the watchdog fired at 0.11 s, and the job was recorded and answered. Here the
    watchdog fires between the first and the second failed image."""
    clock = Clock()
    watchdog = Watchdog(clock)
    store = SqliteStore(tmp_path / "jobs.sqlite3", timeout=1.0)
    store._calls.deadlines = StoreDeadlines(1.0, clock=clock, watchdog=watchdog)
    fired: list[int] = []

    class Failures(dict[int, str]):
        def items(self) -> Any:  # type: ignore[override]
            for number, item in enumerate(super().items()):
                if number == 1:
                    clock.now += 2.0  # the deadline passes while this call runs
                    fired.append(watchdog.abort_overdue())
                yield item

    # Enough rows after the deadline for the work left to matter: the call must stop there.
    # (A call that ends a few steps after its deadline is answered: its answer is good.)
    submission = one_image_job(5000)
    with pytest.raises(DatabaseUnavailable):
        store.create_job(submission, None, Failures({i: "slow" for i in range(5000)}))
    assert fired == [1]
    store.close()


def test_a_sqlite_lease_is_not_taken_by_a_holder_asking_for_a_shorter_one(
    tmp_path: Path,
) -> None:
    """SqliteStore.hold_lease counts a lease ending more than `seconds` (the asker's lease
    length) from now as set before a clock step back, and takes it. A second cluster on the
    same file configured with a shorter IMAGE_SERVICE_LEASE_SECONDS therefore takes a lease
    that is live and unexpired, with no clock step at all: both dispatch until the holder's
    next renewal, and the shorter lease keeps winning after."""
    path = tmp_path / "jobs.sqlite3"
    holder, other = SqliteStore(path), SqliteStore(path)
    assert holder.hold_lease("A", 60.0)
    assert not other.hold_lease("B", 15.0), "B took A's live lease"
    holder.close()
    other.close()


# ---- the status source (the edge's and the API's direct reads) ------------------------------


def test_status_reads_while_postgres_cannot_be_reached_fail_fast_as_unavailable() -> None:
    """README: while the database is cut off, "every route answers within 5 s, and after the
    first call at once: /api/status at the edge 503". When the edge's first read finds the
    database unreachable, StatusSource has no store yet, hence no breaker: every read opens a
    new pool, waits its whole deadline, one at a time under the opening lock, and fails as a
    plain StorageError (which FastStatus hands on to the API instead of answering 503). Four
    concurrent reads take four deadlines."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/jobs"  # nothing listens there
    source = StatusSource(Settings(database_url=url, database_timeout=0.5))

    async def reads() -> tuple[float, list[Any]]:
        began = time.monotonic()
        answers = await asyncio.gather(
            *(source.job_view(n) for n in range(1, 5)), return_exceptions=True
        )
        return time.monotonic() - began, answers

    elapsed, answers = asyncio.run(reads())
    kinds = [type(answer).__name__ for answer in answers]
    assert all(isinstance(answer, DatabaseUnavailable) for answer in answers), kinds
    assert elapsed < 1.2, f"4 reads took {elapsed:.1f} s: each paid the deadline in turn"


# ---- the lease lane -----------------------------------------------------------------------------


class OneStalledRenewal:
    """The lease's store, whose next renewal the database leaves unanswered: cut off at its
    deadline (lease_call_timeout, a sixth of a lease), as core/jobstore/deadline.py would."""

    def __init__(self, store: SqliteStore, stall: float) -> None:
        self._store = store
        self.stall = stall
        self.stall_next = False

    def hold_lease(self, holder: str, seconds: float) -> bool:
        if self.stall_next:
            self.stall_next = False
            time.sleep(self.stall)
            raise DatabaseUnavailable(
                f"the job database did not answer within {self.stall:g} s; please retry"
            )
        return self._store.hold_lease(holder, seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_one_renewal_cut_off_at_its_deadline_leaves_no_dispatch_gap(tmp_path: Path) -> None:
    """actors/parts.lease_call_timeout: the deadline is "half a lease third, so that a
    renewal that overruns leaves the next its chance before dispatching must stop". But the
    lease step sleeps a whole third after the failed renewal: asked at L/3, cut off at L/2, the
    next is asked at 5L/6, after dispatching stopped at 2L/3. Here L = 1.2 s: a 0.2 s pause."""
    seconds = 1.2
    settings = settings_for(tmp_path, lease_seconds=str(seconds))

    async def scenario() -> int:
        lease_store = OneStalledRenewal(SqliteStore(settings.database_path), stall=seconds / 6)
        _, parts = await tracker_with(
            settings, SqliteStore(settings.database_path), "A", True, lease_store
        )  # recovered: the lease taken by its first renewal
        lease_store.stall_next = True
        steps = asyncio.create_task(_lease_steps(parts, 3))
        paused = 0
        while not steps.done():
            paused += not parts.leadership.lease.dispatching
            await asyncio.sleep(0.01)
        await steps
        return paused

    paused = asyncio.run(scenario())
    assert paused == 0, f"dispatching paused for about {paused * 10} ms"


async def _lease_steps(parts: TrackerParts, count: int) -> None:
    for _ in range(count):
        await parts.leadership.step()


def test_a_short_lease_survives_one_renewal_that_tripped_the_breaker(tmp_path: Path) -> None:
    """The lease store's breaker refuses calls for probe_interval = 1 s after one overrun,
    whatever the lease; IMAGE_SERVICE_LEASE_SECONDS goes down to 0.3 s (renewal every 0.1 s,
    deadline 0.05 s). One slow renewal then refuses the next ten: the lease lapses, and the
    tracker steps down and reloads every job although the database answered all along."""
    settings = settings_for(tmp_path)  # LEASE = 0.3 s

    async def scenario() -> list[LeaseChange]:
        lease_store: Any = open_lease_store(settings)
        _, parts = await tracker_with(
            settings, SqliteStore(settings.database_path), "A", True, lease_store
        )  # recovered: the lease held, renewed just now
        lease = parts.leadership.lease
        lease_store._calls.deadlines.down()  # as after one renewal that overran its 0.05 s
        changes: list[LeaseChange] = []
        real_renew = lease.renew

        async def renew() -> LeaseChange:
            changes.append(await real_renew())
            return changes[-1]

        lease.renew = renew  # type: ignore[method-assign]
        for _ in range(4):  # about 0.4 s: more than a lease
            await parts.leadership.step()
        return changes

    changes = asyncio.run(scenario())
    assert LeaseChange.KEPT in changes, f"renewals within a lease: {changes}"


class BlockingJobImages:
    """The store, except that reading the images of job `slow` waits for `go` (a takeover
    loading many jobs, one at a time, from a slow database)."""

    def __init__(self, store: SqliteStore, slow: int) -> None:
        self._store = store
        self.slow = slow
        self.go = threading.Event()
        self.unfinished_reads = 0

    def job_images(self, job_id: int) -> Any:
        if job_id == self.slow:
            self.go.wait(10)
        return self._store.job_images(job_id)

    def unfinished_jobs(self) -> Any:
        self.unfinished_reads += 1
        return self._store.unfinished_jobs()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_lease_taken_again_during_a_takeover_reloads_the_jobs(tmp_path: Path) -> None:
    """core/lease.py / actors/leadership.py: a renewal after a gap of a lease or more is TAKEN,
    "another holder may have had it since we last knew: reload". When the gap falls while the
    previous takeover (lead) is still loading, `loaded` is False so nothing steps down, and
    _start(self.lead) does nothing since a lease work task still runs: the old load finishes
    with jobs read before the gap and the tracker dispatches them. Here job 1 was finished by
    the other cluster during the gap, and the tracker still holds its two images to dispatch."""
    settings = settings_for(tmp_path)
    recorder = SqliteStore(settings.database_path)
    first, _ = recorder.create_job(one_image_job(2), "k1", {})
    second, _ = recorder.create_job(one_image_job(2), "k2", {})

    async def scenario() -> tuple[Any, int]:
        store = BlockingJobImages(SqliteStore(settings.database_path), slow=second)
        _, parts = await tracker_with(settings, store, "A", False)
        leadership = parts.leadership
        await leadership.step()  # TAKEN: the takeover loads job 1, then waits on job 2
        await asyncio.sleep(LEASE + 0.1)  # the lease lane stalls: no renewal for a lease
        other = SqliteStore(settings.database_path)  # another cluster takes over meanwhile
        assert other.hold_lease("B", LEASE)
        done = [ImageOutcome(first, i, processed_at=1.0, width=1, height=1) for i in range(2)]
        other.save_outcomes(done, [first])
        other.release_lease("B")
        await leadership.step()  # held again after the gap: TAKEN, a reload is due
        store.go.set()
        while leadership.work is not None and not leadership.work.done():
            await asyncio.sleep(0.01)
        if not leadership.loaded:  # give a reload started now its time
            await asyncio.sleep(0.2)
        return parts.jobs.book.jobs.get(first), store.unfinished_reads

    stale, reads = asyncio.run(scenario())
    assert stale is None, (
        f"job {first}, finished by the other cluster during the gap, is held to dispatch "
        f"({stale.unsettled} images); unfinished jobs read {reads} time(s)"
    )
