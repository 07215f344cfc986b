"""Leadership: what one tracker does as the dispatch lease comes and goes. Holding it, the
tracker loads the unfinished jobs and dispatches; losing it, or holding it again after a
gap, it saves what settled and forgets its jobs, to be read from the store from then on.

A plain class: the lease (its holder, clock and store calls), the job store, the flush and
the callbacks are passed in, so it is tested without Ray.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from actors.callbacks import CallbackDelivery
from actors.flusher import Flusher
from actors.held_jobs import HeldJobs
from core.errors import StorageError
from core.jobs import ActiveJob
from core.jobstore import JobStore
from core.jobstore.dbthread import DatabaseThread
from core.lease import DispatchLease, LeaseChange
from core.supervise import RETRY_PAUSE_SECONDS
from core.tasks import BackgroundTasks

log = logging.getLogger(__name__)


class Leadership:
    """Recovery at start, then one lease step per turn of the lease loop; `dispatching` says
    whether the tracker may hand images to workers now."""

    def __init__(
        self,
        lease: DispatchLease,
        jobs: HeldJobs,
        store: JobStore,
        db: DatabaseThread,
        flusher: Flusher,
        callbacks: CallbackDelivery,
        tasks: BackgroundTasks,
        retry_pause: float = RETRY_PAUSE_SECONDS,
    ) -> None:
        self.lease = lease
        self._jobs = jobs
        self._store = store
        self._db = db
        self._flusher = flusher
        self._callbacks = callbacks
        self._tasks = tasks
        self._retry_pause = retry_pause
        # True once the unfinished jobs are loaded under the lease held now.
        self._loaded = False
        self._stopping = False
        self._work: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        """The unfinished jobs are loaded under the lease held now."""
        return self._loaded

    @property
    def dispatching(self) -> bool:
        return self._loaded and not self._stopping and self.lease.dispatching

    @property
    def work(self) -> asyncio.Task[None] | None:
        """The work the last lease change called for (a takeover, a pick-up), if any."""
        return self._work

    def start(self) -> None:
        """Recover in the background; `recovered` waits for it."""
        self._recovery = asyncio.get_running_loop().create_task(self.recover())

    async def recovered(self) -> None:
        """Wait for the recovery `start` began (at once if none was)."""
        if self._recovery is not None:
            await self._recovery

    async def recover(self) -> None:
        """Take the dispatch lease if no other cluster holds it, and then load the unfinished
        jobs. A failure is retried, never kept as the answer. Without the lease the tracker
        answers reads and records submissions; the lease step takes over later if it can."""
        while True:
            try:
                change = await self.lease.renew()
                if self.lease.held:
                    await self.lead()
                elif change is LeaseChange.STANDING_BY:
                    log.warning("another cluster holds the dispatch lease; standing by")
                return
            except Exception:
                log.exception("recovering the unfinished jobs failed; trying again")
                await asyncio.sleep(self._retry_pause)

    async def step(self) -> None:
        """One turn of the lease loop: renew the lease, or take it when its holder has let it
        expire. The work a change calls for runs beside the renewals, never in their way."""
        await self.recovered()
        await asyncio.sleep(self.lease.renewal_interval)
        if self._stopping:
            return
        change = await self.lease.renew()
        if change is LeaseChange.LOST:
            await self.step_down("lost the dispatch lease to another cluster")
        elif change is LeaseChange.TAKEN:
            if self._work is not None and not self._work.done():
                # A load under way read jobs before the gap: they may be stale.
                self._work.cancel()
            if self._loaded or self._jobs.book.jobs:
                # Held again after a gap: another cluster may have changed these jobs meanwhile.
                await self.step_down("the dispatch lease lapsed before it was renewed")
            log.warning("took the dispatch lease")
            self._start(self.lead, replace=True)
        elif change is LeaseChange.KEPT:
            # Dispatching may have paused while the lease could not be renewed.
            self._jobs.wake.set()
            self._start(self.lead if not self._loaded else self.pick_up)

    def _start(self, step: Callable[[], Coroutine[Any, Any, None]], replace: bool = False) -> None:
        """Run a step of the lease's work in the background, one at a time (`replace`: start
        it even if one, cancelled, has not ended yet)."""
        if replace or self._work is None or self._work.done():
            self._work = self._tasks.spawn(step())

    async def lead(self) -> None:
        """Become the dispatching tracker: load every unfinished job, one at a time (a restart
        holds no more than the jobs themselves), and deliver the callbacks due. A load that
        fails leaves nothing half loaded: the next lease step tries again."""
        book = self._jobs.forget_all()
        try:
            resumed = await self.load_unfinished(only_unsettled=False)
        except BaseException:
            if self._jobs.book is book:  # not already replaced by a later load
                self._jobs.forget_all()
            raise
        if self._jobs.book is not book:
            return  # a later load replaced this one
        self._loaded = True
        if resumed:
            log.info("resumed %d unfinished jobs", resumed)
        self._tasks.spawn(self._callbacks.for_jobs(None))
        self._jobs.wake.set()

    async def step_down(self, reason: str) -> None:
        """The jobs held here may be another cluster's now: what settled is saved if it can be
        (each image keeps its first result), and the jobs are forgotten whatever happens, to
        be read from the store from now on."""
        self._loaded = False
        log.error("%s; dispatching stops", reason)
        try:
            await self._flusher.flush()
        except StorageError as exc:
            log.error("saving what settled before stepping down failed: %s", exc)
        finally:
            self._jobs.forget_all()

    async def pick_up(self) -> None:
        """Callbacks and jobs another cluster's tracker left: callbacks due (it stopped before
        sending them, or a task that sent them failed), jobs it recorded while standing by."""
        await self._callbacks.for_jobs(None)
        picked = await self.load_unfinished(only_unsettled=True)
        if picked:
            log.info("picked up %d jobs recorded by another cluster", picked)

    async def load_unfinished(self, only_unsettled: bool) -> int:
        """Activate the unfinished jobs not held yet; returns how many. With `only_unsettled`,
        a job whose every image has a result is left alone: its finish is under way."""
        loaded = 0
        for stored in await self._db.run(self._store.unfinished_jobs):
            if stored.job_id in self._jobs.book.jobs:
                continue
            urls, settled = await self._db.run(self._store.job_images, stored.job_id)
            # Checked again after the await: a submission may have activated it meanwhile.
            if stored.job_id in self._jobs.book.jobs or (only_unsettled and all(settled)):
                continue
            self._jobs.activate(
                ActiveJob(
                    stored.job_id,
                    urls,
                    settled,
                    stored.client_id,
                    started=stored.started,
                    cancelled=stored.cancelled,
                )
            )
            loaded += 1
        return loaded

    async def shut_down(self) -> int:
        """Stop dispatching for good, put everything settled so far on disk and give the lease
        up; returns the outcomes saved."""
        self._stopping = True
        saved = await self._flusher.flush()
        self._loaded = False
        await self.lease.release()
        return saved
