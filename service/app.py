"""The Serve ingress: translates HTTP to JobTracker calls and the tracker's answers to the
contract's bodies; every error maps to its status once, in the handlers `errors.install` adds.

A replica keeps no job or client state: jobs, the per-client rate-limit buckets, open-job counts
and idempotency keys are the tracker's (and its database's), so the limits hold however many
replicas there are. What a replica holds is set once when it starts: its settings, the API
keys, the tracker's handle and, when it runs beside the tracker's database, a read-only
connection to it that status is read from.

Endpoints: POST /api/submit/ (and /api/submit), GET /api/status, GET /api/results,
GET /api/jobs, GET /api/jobs/{id}, POST /api/jobs/{id}/cancel, GET /healthz, and the OpenAPI
docs at /docs. `serve_config.yaml` names `build_app` as its
`import_path`; configuration comes from `IMAGE_SERVICE_*` environment variables.
"""

# No `from __future__ import annotations`: FastAPI must resolve the handler annotations
# of a Serve ingress class at import time.
import asyncio
import logging
import re
import uuid
from typing import Any

import ray
from fastapi import FastAPI, Request
from ray import serve
from ray.serve.config import BackpressureConfig

from actors.tracker import tracker_handle
from core.clients import ApiKeys
from core.errors import (
    InvalidSubmission,
    StorageError,
    SubmissionOutcomeUnknown,
    SubmissionTooLarge,
    TrackerUnavailable,
)
from core.models import JobView
from core.settings import Settings
from core.submission import SubmissionLimits, parse_submission, submission_fingerprint
from service import errors
from service.errors import (
    JobNotFound,
    JobNotRecorded,
    TrackerUnhealthy,
    Unauthorized,
    UnknownJob,
)
from service.params import parse_job_id, parse_limit, parse_offset
from service.schemas import (
    ErrorBody,
    HealthBody,
    JobDetailBody,
    JobListBody,
    ResultsBody,
    StatusBody,
    SubmitAccepted,
    job_detail_body,
    job_list_body,
    results_body,
    status_body,
)
from service.status_source import StatusSource
from service.tracker_client import TrackerClient

log = logging.getLogger(__name__)


# Parsing a body this large takes long enough to stall other requests: do it off the loop.
INLINE_PARSE_BYTES = 256 * 1024
VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")  # what an Idempotency-Key may hold, as Stripe's

api = FastAPI(
    title="Image job service",
    version="1.0.0",
    description="Submit store visits with image URLs; every image is downloaded, measured and "
    "its perimeter 2 * (height + width) stored. Poll status and read the results.",
)
errors.install(api)


async def read_body(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length", "").lstrip("0")
    # Counted in digits first: Python refuses to read an integer of more than 4,300.
    if (
        declared.isascii()
        and declared.isdigit()
        and (len(declared) > len(str(cap)) or int(declared) > cap)
    ):
        raise SubmissionTooLarge(f"body is larger than {cap} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise SubmissionTooLarge(f"body is larger than {cap} bytes")
    return bytes(body)


@serve.deployment(
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=256,
    # Past these a request waits nowhere: 503 with Retry-After at once. A database that stalls
    # holds requests up to its deadline (IMAGE_SERVICE_DATABASE_TIMEOUT); none queue behind.
    max_queued_requests=512,
    backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
    # A log line per request costs a large share of a status call's time.
    logging_config={"enable_access_log": False},
)
@serve.ingress(api)
class ImageServiceAPI:
    """The REST API. Config: every `IMAGE_SERVICE_*` variable (see README)."""

    def __init__(self) -> None:
        self._settings = Settings.from_env()
        self._limits = SubmissionLimits.from_settings(self._settings)
        self._api_keys = ApiKeys(self._settings.api_keys)
        tracker = tracker_handle(self._settings)
        self._tracker = TrackerClient(tracker, self._settings.tracker_timeout)
        self._statuses = self._local_status_reader(tracker)

    def _client(self, request: Request) -> str | None:
        """The caller's client id when API keys are on (None when they are off)."""
        if not self._api_keys.required:
            return None
        client = self._api_keys.client_for(request.headers.get("authorization"))
        if client is None:
            raise Unauthorized
        return client

    def _local_status_reader(self, tracker: Any) -> StatusSource | None:
        """Status straight from the database when this replica can read it: it spares every
        poll a round trip through the tracker, which is what bounds status throughput. SQLite
        when this replica runs beside it; PostgreSQL from any node (a SQLite file left beside
        the replica would be stale then)."""
        statuses = StatusSource(self._settings)
        if statuses.local:
            tracker_node = ray.get(
                tracker.ping.remote(), timeout=max(60, self._settings.tracker_timeout)
            )
            if tracker_node != ray.get_runtime_context().get_node_id():
                return None
        return statuses

    @api.post(
        "/api/submit/",
        status_code=201,
        response_model=SubmitAccepted,
        responses={code: {"model": ErrorBody} for code in (400, 401, 409, 413, 429, 503)},
    )
    async def submit(self, request: Request) -> SubmitAccepted:
        """Submit a job of store visits; answers the new job's id once it is recorded.

        Optional: a `callback_url` field receives one POST with the final status (the body
        `/api/status` gives). An `Idempotency-Key` header makes a retry answer the same job id;
        the same key with a different body is a 409."""
        client = self._client(request)
        caller = client or (request.client.host if request.client else "unknown")
        header = self._idempotency_header(request)
        body = await read_body(request, self._settings.max_body_bytes)
        if len(body) > INLINE_PARSE_BYTES:
            submission = await asyncio.to_thread(parse_submission, body, self._limits)
        else:
            submission = parse_submission(body, self._limits)
        if header is None:
            # A fresh key per request: if the tracker restarts mid-call, Ray retries the call
            # and the key makes the retry return the job already recorded, not a second one.
            idempotency_key, fingerprint = uuid.uuid4().hex, None
        else:
            # Scoped by client: one client's key never finds another client's job.
            idempotency_key = f"idempotency:{client or ''}:{header}"
            fingerprint = submission_fingerprint(submission)
        try:
            job_id = await self._tracker.submit(
                submission, idempotency_key, client, fingerprint, caller
            )
        except SubmissionOutcomeUnknown:
            raise  # the job may be kept: its answer says a retry with the same key is safe
        except StorageError as exc:
            raise JobNotRecorded from exc
        return SubmitAccepted(job_id=job_id)

    def _idempotency_header(self, request: Request) -> str | None:
        """The client's `Idempotency-Key` header, if it sent one (the idempotency key is made
        from it and the client's id)."""
        header = request.headers.get("idempotency-key")
        longest = self._settings.max_idempotency_key_length
        if header is not None and (len(header) > longest or not VISIBLE_ASCII.fullmatch(header)):
            raise InvalidSubmission(
                f"Idempotency-Key must be 1 to {longest} visible ASCII characters"
            )
        return header

    @api.post(
        "/api/submit", include_in_schema=False, status_code=201, response_model=SubmitAccepted
    )
    async def submit_without_slash(self, request: Request) -> SubmitAccepted:
        return await self.submit(request)

    async def _job_view(self, job_id: int, client: str | None) -> JobView | None:
        """From the database beside this replica if there is one; from the tracker otherwise,
        or when that read fails."""
        if self._statuses is not None:
            try:
                return await self._statuses.job_view(job_id, client)
            except StorageError as exc:
                log.warning("status from the database failed, asking the tracker: %s", exc)
        view: JobView | None = await self._tracker.status(job_id, client)
        return view

    @api.get(
        "/api/status",
        response_model=StatusBody,
        response_model_exclude_unset=True,
        responses={400: {"model": dict}},
    )
    async def status(self, request: Request, jobid: str | None = None) -> StatusBody:
        """The job's status: ongoing, completed, or failed with the failing store ids."""
        client = self._client(request)
        job_id = parse_job_id(jobid)
        if job_id is None:
            raise UnknownJob
        view = await self._job_view(job_id, client)
        if view is None:
            raise UnknownJob
        return status_body(view)

    @api.get(
        "/api/results",
        response_model=ResultsBody,
        response_model_exclude_unset=True,
        responses={400: {"model": dict}},
    )
    async def results(
        self,
        request: Request,
        jobid: str | None = None,
        offset: str | None = None,
        limit: str | None = None,
    ) -> ResultsBody:
        """Per-image results in a stable order (visit order, then URL order), one page at a time."""
        client = self._client(request)
        job_id = parse_job_id(jobid)
        if job_id is None:
            raise UnknownJob
        start = parse_offset(offset)
        size = parse_limit(
            limit, self._settings.results_page_default, self._settings.results_page_max
        )
        page = await self._tracker.results(job_id, start, size, client)
        if page is None:
            raise UnknownJob
        return results_body(page, size)

    @api.get(
        "/api/jobs",
        response_model=JobListBody,
        responses={code: {"model": ErrorBody} for code in (400, 401)},
    )
    async def list_jobs(
        self, request: Request, offset: str | None = None, limit: str | None = None
    ) -> JobListBody:
        """Recent jobs, newest first, with their progress (this client's only, with API keys)."""
        client = self._client(request)
        start = parse_offset(offset, self._settings.jobs_offset_max)
        size = parse_limit(limit, self._settings.jobs_page_default, self._settings.results_page_max)
        total, jobs = await self._tracker.jobs(client, start, size)
        return job_list_body(total, start, size, jobs)

    @api.get(
        "/api/jobs/{job_id}",
        response_model=JobDetailBody,
        responses={code: {"model": ErrorBody} for code in (401, 404)},
    )
    async def job_detail(self, request: Request, job_id: str) -> JobDetailBody:
        """A job's lifecycle, progress counts, times and per-store errors."""
        client = self._client(request)
        number = parse_job_id(job_id)
        detail = None
        if number is not None:
            detail = await self._tracker.job_detail(number, client)
        if detail is None:
            raise JobNotFound(job_id)
        return job_detail_body(detail)

    @api.post(
        "/api/jobs/{job_id}/cancel",
        status_code=202,
        response_model=JobDetailBody,
        responses={code: {"model": ErrorBody} for code in (401, 404, 409, 503)},
    )
    async def cancel(self, request: Request, job_id: str) -> JobDetailBody:
        """Cancel a job: its queued images are dropped (they settle as cancelled), the ones in
        flight finish, then the job ends; `/api/status` reports it `failed` with a cancel entry
        per store left unfinished. Cancelling again is harmless; an ended job is a 409."""
        client = self._client(request)
        number = parse_job_id(job_id)
        if number is None:
            raise JobNotFound(job_id)
        detail = await self._tracker.cancel(number, client)
        if detail is None:
            raise JobNotFound(job_id)
        return job_detail_body(detail)

    @api.get("/healthz", response_model=HealthBody, responses={503: {"model": HealthBody}})
    async def healthz(self) -> HealthBody:
        """200 when this replica and the job tracker answer."""
        try:
            await self._tracker.ping(timeout=5)
        except TrackerUnavailable as exc:
            raise TrackerUnhealthy from exc
        return HealthBody(status="ok")


def build_app(args: dict[str, str] | None = None) -> serve.Application:
    """Application builder named by `serve_config.yaml` (`import_path: service.app:build_app`)."""
    return ImageServiceAPI.bind()  # type: ignore[attr-defined,no-any-return]
