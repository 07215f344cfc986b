"""The replica's calls to the JobTracker actor, typed: each waits at most `timeout` seconds and
returns what the tracker's method returns. The one module of the service that knows Ray's
errors: a call raises the tracker's own error (a domain error, or a bug's), `TrackerUnavailable`
or `TrackerCallFailed`; never a Ray type."""

from __future__ import annotations

import asyncio
from typing import Any

from ray.exceptions import RayActorError, RayError, RayTaskError

from core.errors import TrackerUnavailable
from core.models import JobDetail, JobSubmission, JobView, ResultsPage


class TrackerCallFailed(RuntimeError):
    """Ray could not run a tracker call for a reason other than the tracker not answering (an
    object lost, a worker out of memory): answered as a bug is (500)."""


def domain_error(exc: Exception) -> Exception:
    """What a caller of the tracker sees of `exc`, raised by a call to it."""
    if isinstance(exc, RayTaskError):
        # The tracker's method raised; Ray re-raises it wrapped, the original as its cause.
        cause = exc.cause
        return domain_error(cause) if isinstance(cause, Exception) else TrackerCallFailed(exc)
    # GetTimeoutError is a TimeoutError; ActorDiedError and ActorUnavailableError (the actor
    # restarting) are RayActorErrors.
    if isinstance(exc, TimeoutError | RayActorError):
        return TrackerUnavailable(f"the tracker did not answer: {exc!r}")
    if isinstance(exc, RayError):
        return TrackerCallFailed(exc)
    return exc


class TrackerClient:
    def __init__(self, handle: Any, timeout: float) -> None:
        self._handle = handle  # a Ray actor handle: its methods are untyped `.remote` calls
        self._timeout = timeout

    async def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        try:
            ref = getattr(self._handle, method).remote(*args)
            return await asyncio.wait_for(ref, timeout=timeout or self._timeout)
        except (RayError, TimeoutError) as exc:
            raise domain_error(exc) from exc

    async def ping(self, timeout: float) -> str:
        """The id of the node holding the job store, once the tracker has recovered."""
        return str(await self._call("ping", timeout=timeout))

    async def submit(
        self,
        submission: JobSubmission,
        idempotency_key: str | None,
        client_id: str | None,
        request_hash: str | None,
        caller: str,
    ) -> int:
        job_id = await self._call(
            "submit", submission, idempotency_key, client_id, request_hash, caller
        )
        return int(job_id)

    async def status(self, job_id: int, client_id: str | None) -> JobView | None:
        view: JobView | None = await self._call("status", job_id, client_id)
        return view

    async def results(
        self, job_id: int, offset: int, limit: int, client_id: str | None
    ) -> ResultsPage | None:
        page: ResultsPage | None = await self._call("results", job_id, offset, limit, client_id)
        return page

    async def jobs(
        self, client_id: str | None, offset: int, limit: int
    ) -> tuple[int, list[JobDetail]]:
        total, details = await self._call("jobs", client_id, offset, limit)
        return int(total), list(details)

    async def job_detail(self, job_id: int, client_id: str | None) -> JobDetail | None:
        detail: JobDetail | None = await self._call("job_detail", job_id, client_id)
        return detail

    async def cancel(self, job_id: int, client_id: str | None) -> JobDetail | None:
        detail: JobDetail | None = await self._call("cancel", job_id, client_id)
        return detail
