"""The replica's calls to the JobTracker actor, typed: each waits at most `timeout` seconds
(a TimeoutError, answered 503) and returns what the tracker's method returns."""

from __future__ import annotations

import asyncio
from typing import Any

from core.models import JobDetail, JobSubmission, JobView, ResultsPage


class TrackerClient:
    def __init__(self, handle: Any, timeout: float) -> None:
        self._handle = handle  # a Ray actor handle: its methods are untyped `.remote` calls
        self._timeout = timeout

    async def _ask(self, ref: Any, timeout: float | None = None) -> Any:
        return await asyncio.wait_for(ref, timeout=timeout or self._timeout)

    async def ping(self, timeout: float) -> str:
        """The id of the node holding the job store, once the tracker has recovered."""
        return str(await self._ask(self._handle.ping.remote(), timeout))

    async def submit(
        self,
        submission: JobSubmission,
        idempotency_key: str | None,
        client_id: str | None,
        request_hash: str | None,
        caller: str,
    ) -> int:
        job_id = await self._ask(
            self._handle.submit.remote(submission, idempotency_key, client_id, request_hash, caller)
        )
        return int(job_id)

    async def status(self, job_id: int, client_id: str | None) -> JobView | None:
        view: JobView | None = await self._ask(self._handle.status.remote(job_id, client_id))
        return view

    async def results(
        self, job_id: int, offset: int, limit: int, client_id: str | None
    ) -> ResultsPage | None:
        page: ResultsPage | None = await self._ask(
            self._handle.results.remote(job_id, offset, limit, client_id)
        )
        return page

    async def jobs(
        self, client_id: str | None, offset: int, limit: int
    ) -> tuple[int, list[JobDetail]]:
        total, details = await self._ask(self._handle.jobs.remote(client_id, offset, limit))
        return int(total), list(details)

    async def job_detail(self, job_id: int, client_id: str | None) -> JobDetail | None:
        detail: JobDetail | None = await self._ask(
            self._handle.job_detail.remote(job_id, client_id)
        )
        return detail

    async def cancel(self, job_id: int, client_id: str | None) -> JobDetail | None:
        detail: JobDetail | None = await self._ask(self._handle.cancel.remote(job_id, client_id))
        return detail
