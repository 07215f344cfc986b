"""Every error the API answers, mapped to its status and body once: the domain errors
(`core.errors`, the tracker not answering among them) and the HTTP layer's own. The tracker's
errors arrive here as themselves: `TrackerClient` unwraps what Ray wraps them in."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import (
    IdempotencyConflict,
    InvalidQueryParameter,
    InvalidSubmission,
    JobAlreadyFinished,
    NotDispatching,
    RateLimited,
    ServiceBusy,
    StorageError,
    StoreMasterError,
    SubmissionOutcomeUnknown,
    SubmissionTooLarge,
    TooManyOpenJobs,
    TrackerUnavailable,
)
from service.schemas import ErrorBody, HealthBody

log = logging.getLogger(__name__)

# What a client should wait before retrying when the tracker or the database is not answering:
# about what a tracker restart takes.
UNAVAILABLE_RETRY_AFTER_SECONDS = 5
# A full service drains as jobs finish: minutes, not seconds.
BUSY_RETRY_AFTER_SECONDS = 30
# The answer, here and at the edge, when the job store does not answer a read.
STORE_NOT_ANSWERING = "the job store is not answering; please retry"

# Each handler takes the exception type it is registered for.
Handler = Callable[[Request, Any], Awaitable[JSONResponse]]
HANDLERS: list[tuple[type[Exception], Handler]] = []


def handles(*types: type[Exception]) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        HANDLERS.extend((exc_type, handler) for exc_type in types)
        return handler

    return register


def install(app: FastAPI) -> None:
    for exc_type, handler in HANDLERS:
        app.add_exception_handler(exc_type, handler)


def error(status_code: int, message: str) -> JSONResponse:
    return JSONResponse(ErrorBody(error=message).model_dump(), status_code=status_code)


class Unauthorized(Exception):
    pass


class UnknownJob(Exception):
    """The spec's endpoints answer a job id that names no job of the caller's with `400 {}`."""


class JobNotFound(Exception):
    """The job-control endpoints answer a job id that names no job of the caller's with 404."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id}")


class JobNotRecorded(Exception):
    """A submission the job store failed to record: nothing of it was kept, so a retry is
    safe (503)."""

    def __init__(self) -> None:
        super().__init__("the job could not be recorded; nothing was kept, please retry")


class TrackerUnhealthy(Exception):
    """`/healthz` while the job tracker does not answer."""


@handles(Unauthorized)
async def unauthorized(_request: Request, _exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"error": "missing or invalid API key"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def unavailable(message: str, retry_after: int = UNAVAILABLE_RETRY_AFTER_SECONDS) -> JSONResponse:
    return JSONResponse(
        {"error": message}, status_code=503, headers={"Retry-After": str(retry_after)}
    )


@handles(UnknownJob)
async def unknown_job(_request: Request, _exc: Exception) -> JSONResponse:
    return JSONResponse({}, status_code=400)


@handles(JobNotFound)
async def job_not_found(_request: Request, exc: Exception) -> JSONResponse:
    return error(404, str(exc))


@handles(TrackerUnhealthy)
async def tracker_unhealthy(_request: Request, _exc: Exception) -> JSONResponse:
    return JSONResponse(
        HealthBody(status="unavailable").model_dump(),
        status_code=503,
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
    )


@handles(InvalidSubmission)
async def invalid_submission(_request: Request, exc: Exception) -> JSONResponse:
    return error(400, str(exc))


@handles(InvalidQueryParameter)
async def invalid_query_parameter(_request: Request, exc: Exception) -> JSONResponse:
    return error(400, str(exc))


@handles(SubmissionTooLarge)
async def submission_too_large(_request: Request, exc: Exception) -> JSONResponse:
    return error(413, str(exc))


@handles(IdempotencyConflict, JobAlreadyFinished)
async def conflict(_request: Request, exc: Exception) -> JSONResponse:
    return error(409, str(exc))


@handles(TooManyOpenJobs)
async def too_many_open_jobs(_request: Request, exc: Exception) -> JSONResponse:
    return error(429, f"too many open jobs: {exc}")


@handles(RateLimited)
async def rate_limited(_request: Request, exc: RateLimited) -> JSONResponse:
    return JSONResponse(
        {"error": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)}
    )


@handles(NotDispatching, ServiceBusy)
async def service_busy(_request: Request, exc: Exception) -> JSONResponse:
    return unavailable(str(exc), retry_after=BUSY_RETRY_AFTER_SECONDS)


@handles(SubmissionOutcomeUnknown)
async def submission_outcome_unknown(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s: %s", request.method, request.url.path, exc)
    return unavailable(str(exc))


@handles(StorageError)
async def storage_failed(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s: storage failed: %s", request.method, request.url.path, exc)
    return unavailable(STORE_NOT_ANSWERING)


@handles(JobNotRecorded)
async def job_not_recorded(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s: storage failed: %s", request.method, request.url.path, exc.__cause__)
    return unavailable(str(exc))


@handles(StoreMasterError)
async def store_master_unreadable(_request: Request, exc: Exception) -> JSONResponse:
    log.error("store master: %s", exc)
    return unavailable("the store master cannot be read; please retry later")


@handles(TrackerUnavailable)
async def tracker_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return unavailable("the job tracker is not answering; please retry")


@handles(Exception)
async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error(500, "internal error")


@handles(StarletteHTTPException)
async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail).lower()}, status_code=exc.status_code)


@handles(RequestValidationError)
async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    fields = ", ".join(".".join(str(part) for part in e["loc"]) for e in exc.errors())
    return error(400, f"invalid request: {fields}")
