"""The job store's rules, written once for both backends: how a job is recorded, the order of a
save, how a job is cancelled and closed, and how a database error reaches the caller.

A backend fills in its dialect: the error its driver raises (`database_error`), its deadline and
transaction, and the statements of a write (`JobWrites`). So SQLite and PostgreSQL cannot drift
apart on what a job's final status and errors are.
"""

from __future__ import annotations

import functools
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

from core.errors import StorageError
from core.jobstore.records import CancelMark
from core.models import JOB_CANCELLED, ImageOutcome, JobStatus, JobSubmission

P = ParamSpec("P")
R = TypeVar("R")


class DatabaseCalls:
    """What `database_errors` needs of the object whose calls it wraps: the driver's error
    type, and the deadline every call runs under (none here: a backend that sets it per
    connection, as PostgreSQL does, keeps this one)."""

    database_error: ClassVar[type[Exception]]

    def _guarded(self, extra_seconds: float) -> AbstractContextManager[None]:
        return nullcontext()


C = TypeVar("C", bound=DatabaseCalls)


def database_errors(
    action: str, extra_seconds: Callable[..., float] | None = None
) -> Callable[[Callable[Concatenate[C, P], R]], Callable[Concatenate[C, P], R]]:
    """A store call under its deadline (`extra_seconds(*args)` more when given), whose
    database error becomes a StorageError saying what could not be done; every read and
    write goes through it."""

    def wrap(method: Callable[Concatenate[C, P], R]) -> Callable[Concatenate[C, P], R]:
        @functools.wraps(method)
        def call(store: C, *args: P.args, **kwargs: P.kwargs) -> R:
            extra = extra_seconds(*args) if extra_seconds is not None else 0.0
            try:
                with store._guarded(extra):
                    return method(store, *args, **kwargs)
            except store.database_error as exc:
                raise StorageError(f"could not {action}: {exc}") from exc

        return call

    return wrap


class JobWrites(ABC):
    """The statements of one write transaction, in a backend's dialect. Each does one thing;
    the rules that put them together are `record_job`, `cancel_job`, `finish_job` and
    `JobStoreBase.save_outcomes`."""

    @abstractmethod
    def job_for_key(self, idempotency_key: str | None, request_hash: str | None) -> int | None:
        """As `JobStore.job_for_key`."""

    @abstractmethod
    def insert_job(
        self,
        submission: JobSubmission,
        idempotency_key: str | None,
        request_hash: str | None,
        client_id: str | None,
        now: float,
    ) -> int | None:
        """The new job's row; its id, or None if another call committed the same key
        meanwhile."""

    @abstractmethod
    def insert_images(self, job_id: int, submission: JobSubmission) -> None:
        """The job's visits and images, in the submission's order."""

    @abstractmethod
    def insert_failures(self, job_id: int, failed_images: dict[int, str], now: float) -> None:
        """Results for the images that failed before any download (index to reason)."""

    @abstractmethod
    def mark_started(self, started: Sequence[tuple[int, float]]) -> None:
        """Each job's first dispatch time, `(job_id, when)`, kept if one is already set."""

    @abstractmethod
    def insert_results(self, outcomes: Sequence[ImageOutcome]) -> list[ImageOutcome]:
        """Insert a batch; an image already settled keeps its first result. A row that cannot
        be stored is stored as a failure of its image instead, alone: returns those outcomes."""

    @abstractmethod
    def unsettled_stores(self, job_id: int) -> list[str]:
        """The stores with an image that has no result yet, in the order of their first one."""

    @abstractmethod
    def mark_cancelled(self, job_id: int, when: float, errors_json: str) -> None:
        """Record the cancel of a job still ongoing and not cancelled yet."""

    @abstractmethod
    def cancel_of(self, job_id: int) -> tuple[float | None, str | None] | None:
        """The job's `(cancelled_at, errors)`; None if there is no such job."""

    @abstractmethod
    def first_failures(self, job_id: int) -> list[tuple[str, str]]:
        """Each store's first failure `(store_id, error)`, stores in the order of it."""

    @abstractmethod
    def close_job(self, job_id: int, status: JobStatus, when: float, errors_json: str) -> None:
        """Give a job still ongoing its final status and errors."""


def record_job(
    writes: JobWrites,
    submission: JobSubmission,
    idempotency_key: str | None,
    failed_images: dict[int, str],
    client_id: str | None,
    request_hash: str | None,
) -> tuple[int, bool]:
    """As `JobStore.create_job`, inside the caller's transaction."""
    known = writes.job_for_key(idempotency_key, request_hash)
    if known is not None:
        return known, False
    now = time.time()
    job_id = writes.insert_job(submission, idempotency_key, request_hash, client_id, now)
    if job_id is None:
        # The same key was committed by another call meanwhile (the insert waited for it):
        # answer its job, as a repeat after it would be answered.
        raced = writes.job_for_key(idempotency_key, request_hash)
        if raced is None:
            raise StorageError("could not record the job: its key vanished")
        return raced, False
    writes.insert_images(job_id, submission)
    writes.insert_failures(job_id, failed_images, now)
    if len(failed_images) == submission.image_count:
        finish_job(writes, job_id)
    return job_id, True


def cancel_job(writes: JobWrites, job_id: int, when: float) -> None:
    """Record the cancel with one error entry per store that still has unsettled images:
    the entries `/api/status` shows once the job has ended."""
    entries = [
        {"store_id": store_id, "error": JOB_CANCELLED}
        for store_id in writes.unsettled_stores(job_id)
    ]
    writes.mark_cancelled(job_id, when, json.dumps(entries))


def finish_job(writes: JobWrites, job_id: int) -> None:
    """Close a fully settled job: `failed` with each failing store's first error (in image
    order) after any cancel entries, else `completed`. A job already closed stays as it is,
    and one the database does not hold is passed over."""
    cancel = writes.cancel_of(job_id)
    if cancel is None:
        return
    cancelled_at, saved_errors = cancel
    # A cancelled job leads with its cancel entries; other stores show their first failure.
    errors: list[dict[str, Any]] = (
        json.loads(saved_errors or "[]") if cancelled_at is not None else []
    )
    named = {entry["store_id"] for entry in errors}
    for store_id, error in writes.first_failures(job_id):
        if store_id not in named:
            errors.append({"store_id": store_id, "error": error})
    failed = bool(errors) or cancelled_at is not None
    status = JobStatus.FAILED if failed else JobStatus.COMPLETED
    writes.close_job(job_id, status, time.time(), json.dumps(errors))


class JobStoreBase(DatabaseCalls, ABC):
    """What both stores do alike; a backend gives its transaction (`_writing`) and how it
    numbers the nodes a batch names (`_number_nodes`)."""

    @abstractmethod
    def _writing(self, durable: bool) -> AbstractContextManager[JobWrites]:
        """One transaction, rolled back on any error, and the statements that run in it. A
        `durable` one survives a power loss once committed, on a backend where others may not."""

    @abstractmethod
    def _number_nodes(self, node_ids: set[str]) -> None:
        """Number the nodes not numbered yet, in a commit of their own before any batch that
        uses them, so that a batch rolled back never leaves a number behind that names
        nothing."""

    @database_errors("save results")
    def save_outcomes(
        self,
        outcomes: Sequence[ImageOutcome],
        finished_jobs: Iterable[int],
        started: Iterable[tuple[int, float]] = (),
        cancelled: Sequence[CancelMark] = (),
    ) -> list[ImageOutcome]:
        """As `JobStore.save_outcomes` says."""
        self._number_nodes({o.node_id for o in outcomes if o.node_id is not None})
        unstorable: list[ImageOutcome] = []
        # A cancel is promised to the client (202): its commit must survive a power loss.
        with self._writing(durable=bool(cancelled)) as writes:
            writes.mark_started(list(started))
            done = 0
            for mark in sorted(cancelled, key=lambda mark: mark.position):
                unstorable += writes.insert_results(outcomes[done : mark.position])
                done = max(done, mark.position)
                cancel_job(writes, mark.job_id, mark.when)
            unstorable += writes.insert_results(outcomes[done:])
            for job_id in finished_jobs:
                finish_job(writes, job_id)
        return unstorable
