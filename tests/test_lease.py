"""The JobTracker's lease, driven without Ray.

The tracker's plain class is built through its constructor, its parts wired as the actor wires
them (`TrackerParts.wire`) around a real `SqliteStore` (two of them on one file stand for two
clusters sharing the database), a real `JobBook` and `DatabaseThread`s, and stand-ins for the
worker pool, metrics and callbacks. Nothing runs on its own: the tests call the tracker's API
and its parts' steps (`Leadership.step`, `Dispatcher.step`, `Flusher.flush`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from actors.callbacks import CallbackDelivery
from actors.parts import TrackerParts, dispatch_lease
from actors.pool import WorkerSlot
from actors.tracker import Tracker
from core.clients import RateLimiter
from core.errors import (
    JobAlreadyFinished,
    NotDispatching,
    ServiceBusy,
    StorageError,
    TooManyOpenJobs,
)
from core.jobstore.dbthread import DatabaseThread
from core.jobstore.sqlite.store import SqliteStore
from core.models import ImageOutcome, JobStatus, JobSubmission, Visit
from core.settings import Settings

pytestmark = pytest.mark.timeout(60)

LEASE = 0.3  # seconds: the lease step sleeps LEASE / 3 before each renewal


def one_image_job(n: int = 1) -> JobSubmission:
    """A job of one visit to a known store with `n` images."""
    urls = tuple(f"http://a.test/{i}" for i in range(n))
    return JobSubmission((Visit("S1", "2025-01-01", urls),))


class StoreMaster:
    def current(self) -> frozenset[str]:
        return frozenset({"S1"})


class Gauge:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.values[",".join((tags or {}).values())] = value


class Metrics:
    """Image and tracker metrics: what each part is told is kept."""

    def __init__(self) -> None:
        self.ended: list[tuple[Any, float]] = []
        self.callbacks: list[bool] = []
        self.jobs, self.in_flight, self.queue_depth = Gauge(), Gauge(), Gauge()
        self.oldest_queued_seconds, self.flush_backlog, self.dispatch_lease = (
            Gauge(), Gauge(), Gauge()
        )  # fmt: skip

    def failed_at_once(self, *_args: Any) -> None:
        pass

    def flushed(self, _seconds: float) -> None:
        pass

    def job_ended(self, state: Any, seconds: float) -> None:
        self.ended.append((state, seconds))

    def callback_sent(self, delivered: bool) -> None:
        self.callbacks.append(delivered)


class Callbacks:
    async def for_jobs(self, _job_ids: Any) -> None:
        pass

    async def deliver_all(self, _due: Any) -> None:
        pass


class Handle:
    """A worker's actor handle: records the batches sent to it."""

    def __init__(self) -> None:
        self.batches: list[Any] = []
        outer = self

        class Accept:
            def remote(self, batch: Any) -> Any:
                outer.batches.append(batch)
                fut = asyncio.get_running_loop().create_future()
                fut.set_result(None)
                return fut

        self.accept = Accept()


class Pool:
    """One ready worker with room for 10 images."""

    def __init__(self) -> None:
        self.worker = WorkerSlot("w", "node", 0, Handle(), gpu_slots=10, capacity=10, ready=True)

    @property
    def in_flight(self) -> int:
        return len(self.worker.in_flight)

    def in_flight_of(self, job_id: int) -> set[int]:
        return {index for held, index in self.worker.in_flight if held == job_id}

    def freest_first(self) -> list[WorkerSlot]:
        return [self.worker]

    def by_key(self, key: str) -> WorkerSlot | None:
        return self.worker if key == "w" else None


class FlakyStore:
    """The store, except that renewing the lease fails once `failing` is set (the database is
    locked by another process past the busy timeout, or the disk answers EIO)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.failing = False

    def hold_lease(self, holder: str, seconds: float) -> bool:
        if self.failing:
            raise StorageError("could not hold the dispatch lease: database is locked")
        return self._store.hold_lease(holder, seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def settings_for(data_dir: Path, **values: str) -> Settings:
    env = {"IMAGE_SERVICE_DATA_DIR": str(data_dir), "IMAGE_SERVICE_LEASE_SECONDS": str(LEASE)}
    env.update({f"IMAGE_SERVICE_{k.upper()}": v for k, v in values.items()})
    return Settings.from_env(env)


async def tracker_with(
    settings: Settings,
    store: Any,
    holder: str,
    leading: bool,
    lease_store: Any = None,
    sender: Any = None,
) -> tuple[Tracker, TrackerParts]:
    """The tracker around `store`, with its parts; the lease renewed through a store connection
    of its own unless `lease_store` is given; callbacks that send nothing unless `sender` is
    given (then the real delivery, over it). `leading`: recovered as the actor does at its
    start, so holding the lease (free, or already `holder`'s) and its jobs loaded; otherwise
    nothing has run yet, not even a first renewal."""
    db = DatabaseThread()
    lease = dispatch_lease(holder, settings, lease_store or SqliteStore(settings.database_path))
    metrics = Metrics()
    callbacks = (
        Callbacks() if sender is None else CallbackDelivery(sender, store, db, lease, metrics)  # type: ignore[arg-type]
    )
    parts = TrackerParts.wire(
        settings,
        store=store,
        db=db,
        lease=lease,
        store_master=StoreMaster(),  # type: ignore[arg-type]
        submit_limiter=RateLimiter(1000.0, 1000),
        pool=Pool(),  # type: ignore[arg-type]
        callbacks=callbacks,  # type: ignore[arg-type]
        image_metrics=Metrics(),  # type: ignore[arg-type]
        metrics=metrics,  # type: ignore[arg-type]
    )
    tracker = Tracker(settings, parts)
    if leading:
        await parts.leadership.recover()
        assert parts.leadership.loaded, "the lease is another holder's"
    return tracker, parts


# ---- a standby tracker records jobs but counts none of them ---------------------------------


def test_a_standby_tracker_still_holds_a_client_to_its_open_jobs_limit(tmp_path: Path) -> None:
    """A client's open-jobs limit holds through the cluster standing by too: it counts the
    client's unfinished jobs on disk, where the dispatching cluster's are."""
    settings = settings_for(tmp_path, max_open_jobs_per_client="1")
    leader_store = SqliteStore(settings.database_path)
    assert leader_store.hold_lease("leader", 60)

    async def scenario() -> None:
        standby, _ = await tracker_with(
            settings, SqliteStore(settings.database_path), "standby", False
        )
        await standby.submit(one_image_job(), "k1", "client", None, "client")
        with pytest.raises(TooManyOpenJobs):
            await standby.submit(one_image_job(), "k2", "client", None, "client")

    asyncio.run(scenario())


def test_a_standby_tracker_still_holds_the_unsettled_images_limit(tmp_path: Path) -> None:
    """The unsettled-images limit holds through the standby too (503 + Retry-After)."""
    settings = settings_for(tmp_path, max_queued_images="3")
    leader_store = SqliteStore(settings.database_path)
    assert leader_store.hold_lease("leader", 60)

    async def scenario() -> None:
        standby, _ = await tracker_with(
            settings, SqliteStore(settings.database_path), "standby", False
        )
        await standby.submit(one_image_job(3), "k1", None, None, "a")
        with pytest.raises(ServiceBusy):
            await standby.submit(one_image_job(3), "k2", None, None, "a")

    asyncio.run(scenario())


# ---- a tracker that lost the lease keeps its jobs as they were -------------------------------


def _lose_the_lease_then_let_the_other_cluster_finish(tmp_path: Path, **values: str) -> Any:
    settings = settings_for(tmp_path, **values)
    other = SqliteStore(settings.database_path)

    async def scenario() -> tuple[Tracker, int]:
        store = SqliteStore(settings.database_path)
        assert store.hold_lease("A", LEASE)
        tracker, parts = await tracker_with(settings, store, "A", True)
        job_id = await tracker.submit(one_image_job(), "k1", "client", None, "client")
        assert job_id in parts.jobs.book.jobs
        await asyncio.sleep(LEASE + 0.05)  # A stalls past its lease (GC, a frozen loop)...
        assert other.hold_lease("B", 60)  # ...and the other cluster takes over
        await parts.leadership.step()
        assert parts.leadership.loaded is False  # A noticed: "dispatching stops"
        # B dispatches the job and finishes it.
        other.save_outcomes([ImageOutcome(job_id, 0, time.time(), width=2, height=3)], [job_id])
        assert other.job_view(job_id).status is JobStatus.COMPLETED  # type: ignore[union-attr]
        return tracker, job_id

    return settings, scenario


def test_status_after_losing_the_lease_follows_the_database(tmp_path: Path) -> None:
    """A tracker that lost the lease forgets its jobs: its `status` follows the store, where
    the other cluster completes them."""
    _settings, lose = _lose_the_lease_then_let_the_other_cluster_finish(tmp_path)

    async def scenario() -> None:
        tracker, job_id = await lose()
        view = await tracker.status(job_id, None)
        assert view is not None and view.status is JobStatus.COMPLETED

    asyncio.run(scenario())


def test_after_losing_the_lease_a_finished_job_no_longer_counts_as_open(tmp_path: Path) -> None:
    """A job the other cluster finished no longer counts against the client's limit on the
    tracker that lost the lease."""
    _settings, lose = _lose_the_lease_then_let_the_other_cluster_finish(
        tmp_path, max_open_jobs_per_client="1"
    )

    async def scenario() -> None:
        tracker, _job_id = await lose()
        await tracker.submit(one_image_job(), "k2", "client", None, "client")

    asyncio.run(scenario())


# ---- a leader that cannot renew keeps dispatching past its lease -----------------------------


def test_a_leader_that_cannot_renew_stops_dispatching_once_its_lease_has_expired(
    tmp_path: Path,
) -> None:
    """While renewing fails (the supervised loop logs it and tries again), dispatching stops
    before the lease expires: the other cluster may take it then, and never two dispatch."""
    settings = settings_for(tmp_path)
    other = SqliteStore(settings.database_path)

    async def scenario() -> None:
        store = FlakyStore(SqliteStore(settings.database_path))
        assert store.hold_lease("A", LEASE)
        tracker, parts = await tracker_with(settings, store, "A", True, lease_store=store)
        await tracker.submit(one_image_job(3), "k1", None, None, "a")
        store.failing = True
        deadline = time.monotonic() + LEASE * 2
        while time.monotonic() < deadline:
            await parts.leadership.step()  # logged, and tried again
        assert other.hold_lease("B", 60)  # B leads now, as the database says
        parts.jobs.wake.set()
        await parts.dispatcher.step()
        assert parts.pool.worker.in_flight == set(), "A dispatched without a lease"

    asyncio.run(scenario())


def test_a_tracker_that_leads_again_does_not_dispatch_images_settled_meanwhile(
    tmp_path: Path,
) -> None:
    """A lost the lease with a job in its book; B took over, finished the job and died. When A
    takes the lease back it dispatches nothing of that job: settled images never go again."""
    settings = settings_for(tmp_path)
    other = SqliteStore(settings.database_path)

    async def scenario() -> None:
        store = SqliteStore(settings.database_path)
        assert store.hold_lease("A", LEASE)
        tracker, parts = await tracker_with(settings, store, "A", True)
        job_id = await tracker.submit(one_image_job(3), "k1", None, None, "a")
        await asyncio.sleep(LEASE + 0.05)
        assert other.hold_lease("B", LEASE)
        await parts.leadership.step()
        assert parts.leadership.loaded is False
        now = time.time()
        other.save_outcomes(
            [ImageOutcome(job_id, i, now, width=1, height=1) for i in range(3)], [job_id]
        )
        await asyncio.sleep(LEASE + 0.05)  # B dies; its lease runs out
        await parts.leadership.step()
        assert parts.leadership.work is not None
        await parts.leadership.work
        assert parts.leadership.loaded is True
        parts.jobs.wake.set()
        await parts.dispatcher.step()
        assert parts.pool.worker.in_flight == set(), "images already settled on disk"

    asyncio.run(scenario())


# ---- the leader and the jobs another cluster recorded -------------------------------------------


def test_the_leader_cancels_a_job_the_standby_recorded_before_it_picked_it_up(
    tmp_path: Path,
) -> None:
    """A cancel reaching the leader before it has picked up a job the standby recorded (it
    looks every LEASE_SECONDS / 3) picks the job up and cancels it."""
    settings = settings_for(tmp_path)
    standby_store = SqliteStore(settings.database_path)

    async def scenario() -> None:
        store = SqliteStore(settings.database_path)
        assert store.hold_lease("A", 60)
        leader, _ = await tracker_with(settings, store, "A", True)
        job_id, created = standby_store.create_job(one_image_job(2), "k1", {})
        assert created
        detail = await leader.cancel(job_id, None)
        assert detail is not None
        assert detail.cancelled_at is not None, f"answered 202 {detail.state.value}, not cancelled"

    asyncio.run(scenario())


def test_a_standby_answers_the_cancel_of_an_ended_job_with_409_not_retry(
    tmp_path: Path,
) -> None:
    """The standby answers the cancel of an ended job 409, as the leader does; only a job
    still running is left to the leader (503 with Retry-After)."""
    settings = settings_for(tmp_path)
    leader_store = SqliteStore(settings.database_path)
    assert leader_store.hold_lease("leader", 60)
    job_id, _ = leader_store.create_job(one_image_job(1), "k1", {})
    leader_store.save_outcomes([ImageOutcome(job_id, 0, time.time(), error="HTTP 404")], [job_id])

    async def scenario() -> None:
        standby, _ = await tracker_with(
            settings, SqliteStore(settings.database_path), "standby", False
        )
        with pytest.raises(JobAlreadyFinished):
            await standby.cancel(job_id, None)

    asyncio.run(scenario())


class RecordingSender:
    """The callback sender, without the network: records the job of every POST it would make."""

    def __init__(self) -> None:
        self.delivered: list[int] = []

    async def deliver(self, _url: str, body: dict[str, Any], *_: Any) -> tuple[int, str | None]:
        self.delivered.append(int(body["job_id"]))
        return 1, None


def test_a_callback_due_of_a_job_the_standby_finished_survives_its_restart(
    tmp_path: Path,
) -> None:
    """A callback left due by another tracker (a standby that ended a job at its submit, then
    stopped) is sent by the leader: its lease step sends every callback due."""
    settings = settings_for(tmp_path)
    leader_store = SqliteStore(settings.database_path)
    assert leader_store.hold_lease("leader", 60)
    unknown = JobSubmission(
        (Visit("NOT-A-STORE", "2025-01-01", ("http://a.test/1",)),),
        callback_url="http://hooks.test/done",
    )

    async def scenario() -> None:
        from_leader, from_standby = RecordingSender(), RecordingSender()
        _, leader = await tracker_with(settings, leader_store, "leader", True, sender=from_leader)
        # The standby recorded it (ended at once) and died before `mark_callback_done`.
        job_id, _ = SqliteStore(settings.database_path).create_job(
            unknown, "k1", {0: "store_id not in store master"}
        )
        assert [due.job_id for due in leader_store.callbacks_due(None)] == [job_id]
        _, restarted = await tracker_with(
            settings, SqliteStore(settings.database_path), "standby", False, sender=from_standby
        )
        await restarted.leadership.recover()
        await leader.leadership.step()
        await asyncio.gather(*restarted.tasks.running(), *leader.tasks.running())
        delivered = from_standby.delivered + from_leader.delivered
        assert delivered == [job_id], "the callback is sent once, by the leader"
        assert leader_store.callbacks_due(None) == []

    asyncio.run(scenario())


# ---- the lease is never held back by client work ------------------------------------------------


class SlowReads:
    """The store, except that reading a job takes 0.5 s (a client's heavy reads, a slow disk)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def job_detail(self, *args: Any) -> Any:
        time.sleep(0.5)
        return self._store.job_detail(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_backlog_of_client_reads_never_pauses_dispatching(tmp_path: Path) -> None:
    """Four seconds of reads queued on the store's thread (ten leases) while the lease step
    renews: dispatching never pauses, since renewals have a connection and a thread of their
    own. With renewals behind the reads, it stopped within 0.2 s."""
    settings = settings_for(tmp_path)

    async def scenario() -> None:
        store = SlowReads(SqliteStore(settings.database_path))
        tracker, parts = await tracker_with(settings, store, "A", True)
        assert SqliteStore(settings.database_path).hold_lease("A", LEASE)
        reads = asyncio.gather(*(tracker.job_detail(1, None) for _ in range(8)))
        renewals = asyncio.create_task(_lease_steps(parts, seconds=1.5))
        paused = 0
        while not renewals.done():
            paused += not parts.leadership.dispatching
            await asyncio.sleep(0.01)
        await renewals
        assert paused == 0, f"dispatching paused for {paused * 10} ms"
        assert not reads.done(), "the backlog was gone before the renewals ended"
        await reads

    asyncio.run(scenario())


async def _lease_steps(parts: TrackerParts, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await parts.leadership.step()


def test_a_cancel_after_the_lease_lapsed_is_left_to_the_holder(tmp_path: Path) -> None:
    """A leader whose lease ran out unrenewed no longer takes cancels (another cluster may
    hold the lease and the job): 503 with Retry-After, as on a standby."""
    settings = settings_for(tmp_path)

    async def scenario() -> None:
        store = SqliteStore(settings.database_path)
        tracker, _ = await tracker_with(settings, store, "A", True)
        job_id = await tracker.submit(one_image_job(2), "k1", None, None, "a")
        await asyncio.sleep(LEASE * 2 / 3 + 0.02)  # no renewal: the dispatch window closes
        with pytest.raises(NotDispatching):
            await tracker.cancel(job_id, None)
        assert store.job_detail(job_id).cancelled_at is None  # type: ignore[union-attr]

    asyncio.run(scenario())


class FailingJobLoads:
    """The store, except that a job's images cannot be read after the first (the database
    went away in the middle of a takeover)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.loads = 0

    def job_images(self, job_id: int) -> Any:
        self.loads += 1
        if self.loads > 1:
            raise StorageError("could not read a job's images: the job database did not answer")
        return self._store.job_images(job_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_takeover_that_fails_half_way_holds_no_job(tmp_path: Path) -> None:
    """A load of the unfinished jobs that fails after the first leaves nothing half loaded:
    no job answers `ongoing` from memory, none counts twice against the limits."""
    settings = settings_for(tmp_path)
    recorder = SqliteStore(settings.database_path)
    job_ids = [recorder.create_job(one_image_job(), f"k{n}", {})[0] for n in range(2)]

    async def scenario() -> None:
        store = FailingJobLoads(SqliteStore(settings.database_path))
        tracker, parts = await tracker_with(settings, store, "A", False)
        with pytest.raises(StorageError):
            await parts.leadership.lead()
        assert parts.jobs.book.jobs == {}
        assert parts.leadership.loaded is False
        recorder.save_outcomes(
            [ImageOutcome(job_ids[0], 0, time.time(), width=1, height=1)], [job_ids[0]]
        )
        view = await tracker.status(job_ids[0], None)
        assert view is not None and view.status is JobStatus.COMPLETED

    asyncio.run(scenario())


class FailingSaves:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def save_outcomes(self, *_args: Any) -> Any:
        raise StorageError("could not save results: the job database did not answer")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_step_down_whose_save_fails_still_forgets_the_jobs(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)

    async def scenario() -> None:
        tracker, parts = await tracker_with(
            settings, FailingSaves(SqliteStore(settings.database_path)), "A", True
        )
        job_id = await tracker.submit(one_image_job(), "k1", None, None, "a")
        await tracker.report("w", [ImageOutcome(job_id, 0, time.time(), width=1, height=1)])
        await parts.leadership.step_down("lost the dispatch lease to another cluster")
        assert parts.jobs.book.jobs == {}
        assert parts.leadership.loaded is False

    asyncio.run(scenario())


def test_a_tracker_that_lost_the_lease_sends_no_callback_of_a_job_it_finishes(
    tmp_path: Path,
) -> None:
    """A finished its last images, then lost the lease before its flush: the save goes on
    (each image keeps its first result), but the callback is the new holder's to send."""
    settings = settings_for(tmp_path)
    hooked = JobSubmission(
        (Visit("S1", "2025-01-01", ("http://a.test/1",)),), callback_url="http://hooks.test/"
    )

    async def scenario() -> None:
        store = SqliteStore(settings.database_path)
        sent = RecordingSender()
        tracker, parts = await tracker_with(settings, store, "A", True, sender=sent)
        job_id = await tracker.submit(hooked, "k1", None, None, "a")
        await tracker.report("w", [ImageOutcome(job_id, 0, time.time(), width=1, height=1)])
        await asyncio.sleep(LEASE + 0.02)
        assert SqliteStore(settings.database_path).hold_lease("B", 60)
        await parts.flusher.flush()
        await asyncio.gather(*parts.tasks.running())
        assert sent.delivered == []
        assert [due.job_id for due in store.callbacks_due(None)] == [job_id]

    asyncio.run(scenario())


def test_only_the_lease_holder_claims_a_callback(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    store = SqliteStore(settings.database_path)
    hooked = JobSubmission(
        (Visit("NOT-A-STORE", "2025-01-01", ("http://a.test/1",)),),
        callback_url="http://hooks.test/",
    )
    job_id, _ = store.create_job(hooked, "k1", {0: "store_id not in store master"})
    assert not store.claim_callback(job_id, "A"), "claimed without holding the lease"
    assert store.hold_lease("A", 60)
    assert not store.claim_callback(job_id, "B"), "claimed while another holds the lease"
    assert store.claim_callback(job_id, "A")
    store.mark_callback_done(job_id, time.time())
    assert not store.claim_callback(job_id, "A"), "claimed a callback already delivered"


# ---- the tracker's metrics -------------------------------------------------------------------


def test_a_job_all_of_unknown_stores_ends_at_submit_and_is_timed_and_called_back(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    hooked = JobSubmission(
        (Visit("NOT-A-STORE", "2025-01-01", ("http://a.test/1",)),),
        callback_url="http://hooks.test/",
    )

    async def scenario() -> Metrics:
        sent = RecordingSender()
        tracker, parts = await tracker_with(
            settings, SqliteStore(settings.database_path), "A", True, sender=sent
        )
        job_id = await tracker.submit(hooked, "k1", None, None, "a")
        assert await tracker.submit(hooked, "k1", None, None, "a") == job_id  # a repeat
        await asyncio.gather(*parts.tasks.running())
        assert sent.delivered == [job_id]
        return parts.metrics  # type: ignore[return-value]

    metrics = asyncio.run(scenario())
    assert [(str(state), seconds) for state, seconds in metrics.ended] == [("failed", 0.0)]
    assert metrics.callbacks == [True]


def test_the_metrics_step_sets_the_queue_backlog_and_lease_gauges(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, metrics_interval="1", lease_seconds="30")

    async def scenario() -> tuple[Metrics, Metrics]:
        store = SqliteStore(settings.database_path)
        tracker, parts = await tracker_with(settings, store, "A", True)
        job_id = await tracker.submit(one_image_job(12), None, None, None, "a")
        await parts.dispatcher.step()  # 10 go to the worker, 2 wait
        await tracker.report("w", [ImageOutcome(job_id, 0, time.time(), width=1, height=1)])
        await tracker._metrics_step()
        leader = parts.metrics
        standby, standby_parts = await tracker_with(
            settings, SqliteStore(settings.database_path), "B", False
        )
        await standby_parts.leadership.recover()
        await standby._metrics_step()
        return leader, standby_parts.metrics  # type: ignore[return-value]

    leader, standby = asyncio.run(scenario())
    assert leader.queue_depth.values[""] == 2
    assert 1.0 <= leader.oldest_queued_seconds.values[""] < 5.0  # queued before the 1 s sleep
    assert leader.flush_backlog.values[""] == 1
    assert leader.in_flight.values[""] == 9
    assert (leader.dispatch_lease.values[""], standby.dispatch_lease.values[""]) == (1, 0)
    assert standby.oldest_queued_seconds.values[""] == 0.0


def test_the_report_that_ends_a_job_has_it_flushed_at_once(tmp_path: Path) -> None:
    """The flush loop waits its interval unless a job ended: then its client sees it at once."""
    settings = settings_for(tmp_path, flush_interval="30")

    async def scenario() -> None:
        store = SqliteStore(settings.database_path)
        tracker, parts = await tracker_with(settings, store, "A", True)
        job_id = await tracker.submit(one_image_job(), "k1", None, None, "a")
        stepping = asyncio.create_task(parts.flusher.step())
        await tracker.report("w", [ImageOutcome(job_id, 0, time.time(), width=1, height=1)])
        await asyncio.wait_for(stepping, 5)
        view = store.job_view(job_id)
        assert view is not None and view.status is JobStatus.COMPLETED

    asyncio.run(scenario())
