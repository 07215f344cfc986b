"""The JobTracker's parts and how they are wired to one another; `tracker_parts` builds them
from the settings for the real actor, tests wire the same graph around fakes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ray

from actors.autoscale import Autoscaling
from actors.callbacks import CallbackDelivery
from actors.dispatcher import Dispatcher
from actors.flusher import Flusher
from actors.held_jobs import HeldJobs
from actors.leadership import Leadership
from actors.metrics import ImageMetrics, TrackerMetrics
from actors.pool import WorkerPool
from core.callback import CallbackLimits, CallbackSender
from core.clients import RateLimiter
from core.images.urlguard import AddressPolicy
from core.jobs import JobLimits
from core.jobstore import JobStore, open_store
from core.jobstore.dbthread import DatabaseThread
from core.lease import DispatchLease
from core.settings import Settings
from core.store_master import StoreMasterCache
from core.tasks import BackgroundTasks


@dataclass(frozen=True)
class TrackerParts:
    store: JobStore
    db: DatabaseThread  # the one thread that calls `store`
    store_master: StoreMasterCache
    submit_limiter: RateLimiter
    pool: WorkerPool
    callbacks: CallbackDelivery
    image_metrics: ImageMetrics
    metrics: TrackerMetrics
    tasks: BackgroundTasks
    jobs: HeldJobs
    flusher: Flusher
    leadership: Leadership
    dispatcher: Dispatcher
    autoscaling: Autoscaling

    @classmethod
    def wire(
        cls,
        settings: Settings,
        *,
        store: JobStore,
        db: DatabaseThread,
        lease: DispatchLease,
        store_master: StoreMasterCache,
        submit_limiter: RateLimiter,
        pool: WorkerPool,
        callbacks: CallbackDelivery,
        image_metrics: ImageMetrics,
        metrics: TrackerMetrics,
    ) -> TrackerParts:
        """The tracker's own parts (its jobs, flush, leadership and dispatch) around the parts
        that reach out of it (the stores, the lease, the workers, callbacks and metrics)."""
        tasks = BackgroundTasks()
        jobs = HeldJobs(JobLimits.from_settings(settings), image_metrics)
        flusher = Flusher(
            jobs, store, db, callbacks, image_metrics, metrics, tasks, settings.flush_interval
        )
        leadership = Leadership(lease, jobs, store, db, flusher, callbacks, tasks)
        dispatcher = Dispatcher(
            jobs, pool, leadership, image_metrics, tasks, settings.node_refresh_interval
        )
        return cls(
            store=store,
            db=db,
            store_master=store_master,
            submit_limiter=submit_limiter,
            pool=pool,
            callbacks=callbacks,
            image_metrics=image_metrics,
            metrics=metrics,
            tasks=tasks,
            jobs=jobs,
            flusher=flusher,
            leadership=leadership,
            dispatcher=dispatcher,
            autoscaling=Autoscaling(settings, jobs, pool, leadership),
        )


def tracker_parts(settings: Settings) -> TrackerParts:
    """The parts of the tracker running as the cluster's actor (called inside it: the lease's
    holder and the handle the image workers report to come from Ray's runtime context)."""
    store = open_store(settings)
    metrics = TrackerMetrics()
    db = DatabaseThread(failed=metrics.store_failed)
    context = ray.get_runtime_context()
    # The lease is held in the name of this cluster (its GCS address), so a tracker that Ray
    # restarts in the same cluster takes it back at once instead of waiting for it to expire.
    # The head node's id tells two clusters apart that share an address (two `make run`s on
    # their own hosts, both 127.0.0.1:6379).
    lease = dispatch_lease(
        f"{context.gcs_address} {context.get_node_id()}",
        settings,
        open_lease_store(settings),
        metrics.store_failed,
    )
    sender = CallbackSender(
        CallbackLimits.from_settings(settings),
        AddressPolicy.from_entries(settings.allow_private_urls, settings.allowed_hosts),
    )
    return TrackerParts.wire(
        settings,
        store=store,
        db=db,
        lease=lease,
        store_master=StoreMasterCache(settings.store_master),
        submit_limiter=RateLimiter(settings.submit_rate, settings.submit_burst),
        pool=WorkerPool(settings, context.current_actor),
        callbacks=CallbackDelivery(sender, store, db, lease, metrics),
        image_metrics=ImageMetrics(),
        metrics=metrics,
    )


def dispatch_lease(
    holder: str,
    settings: Settings,
    lease_store: JobStore,
    store_failed: Callable[[str], None] | None = None,
) -> DispatchLease:
    """The dispatch lease in `holder`'s name, renewed through `lease_store` on a thread of its
    own: no client read, job load or stalled call queued on the job store's thread can hold a
    renewal back past the point where dispatching must stop. `store_failed` is told of each
    renewal the store failed, by kind."""
    lane = DatabaseThread("lease", failed=store_failed)

    async def hold(holder: str, seconds: float) -> bool:
        return await lane.run(lease_store.hold_lease, holder, seconds)

    async def release(holder: str) -> None:
        await lane.run(lease_store.release_lease, holder)

    return DispatchLease(holder, settings.lease_seconds, hold=hold, release=release)


def open_lease_store(settings: Settings) -> JobStore:
    """The job store as the lease's renewals use it: one connection, a deadline of a sixth of
    a lease, and every renewal tried (there is no queue of them to spare)."""
    return open_store(
        settings, timeout=lease_call_timeout(settings), max_connections=1, probe_interval=0
    )


def lease_call_timeout(settings: Settings) -> float:
    """The deadline of a lease renewal: half a lease third, so that a renewal that overruns
    leaves the next its chance before dispatching must stop."""
    return min(settings.database_timeout, settings.lease_seconds / 6)
