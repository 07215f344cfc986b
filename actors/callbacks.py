"""Completion callbacks as the tracker sends them: for jobs just finished, and after a restart
for every finished job whose callback was neither delivered nor given up on.

Only the holder of the dispatch lease sends, and only a callback it has claimed in the store
while holding it: a tracker that lost the lease (stepping down, shut down, cut off) never sends
one the new holder sends too. It stops between attempts once it stops dispatching; an attempt
under way then still ends, so a callback goes twice only when its sender dies or loses the
lease in the middle of an attempt."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from core.callback import CallbackSender, CallbackStopped
from core.errors import StorageError
from core.jobstore import JobStore
from core.jobstore.dbthread import DatabaseThread
from core.jobstore.records import DueCallback
from core.lease import DispatchLease
from core.models import status_payload

if TYPE_CHECKING:  # the metrics are Ray's: this module stays free of Ray
    from actors.metrics import TrackerMetrics

log = logging.getLogger(__name__)


class CallbackDelivery:
    def __init__(
        self,
        sender: CallbackSender,
        store: JobStore,
        db: DatabaseThread,
        lease: DispatchLease,
        metrics: TrackerMetrics | None = None,
    ) -> None:
        self._sender = sender
        self._store = store
        self._db = db
        self._lease = lease
        self._metrics = metrics
        self._sending: set[int] = set()  # job ids: a callback is never sent twice at once

    async def for_jobs(self, job_ids: list[int] | None) -> None:
        """Deliver the callbacks due of these jobs; of every finished job when None."""
        if not self._lease.dispatching:
            return
        due = await self._db.run(self._store.callbacks_due, job_ids)
        await self.deliver_all(due)

    async def deliver_all(self, due: list[DueCallback]) -> None:
        fresh = [callback for callback in due if callback.job_id not in self._sending]
        self._sending.update(callback.job_id for callback in fresh)
        try:
            await asyncio.gather(*(self._deliver(callback) for callback in fresh))
        finally:
            self._sending.difference_update(callback.job_id for callback in fresh)

    async def _deliver(self, callback: DueCallback) -> None:
        context = {"job_id": callback.job_id, "state": callback.view.status.value}
        if not self._lease.dispatching or not await self._db.run(
            self._store.claim_callback, callback.job_id, self._lease.holder
        ):
            log.info("callback left to the holder of the dispatch lease", extra=context)
            return
        try:
            attempts, failure = await self._sender.deliver(
                callback.url, status_payload(callback.view), lambda: self._lease.dispatching
            )
        except CallbackStopped:
            log.warning("callback left to the next holder of the dispatch lease", extra=context)
            return
        if self._metrics is not None:
            self._metrics.callback_sent(delivered=failure is None)
        if failure is None:
            log.info("callback delivered", extra={**context, "attempts": attempts})
        else:
            log.warning(
                "callback not delivered; giving up",
                extra={**context, "attempts": attempts, "error": failure},
            )
        try:
            await self._db.run(self._store.mark_callback_done, callback.job_id, time.time())
        except StorageError as exc:
            log.error("recording the callback failed: %s", exc, extra=context)
