"""Domain errors, each answered with a status of its own (mapped once, at the HTTP edge).

Each message is meant for the client. The tracker raises them; the service's client of the
tracker raises them again as they were, free of Ray's wrapping.
"""

from __future__ import annotations


class InvalidSubmission(ValueError):
    """The body breaks the contract; the message names the field and what is wrong (400)."""


class InvalidQueryParameter(ValueError):
    """A query parameter the API cannot use (400); the message names it and what it takes."""


class SubmissionTooLarge(ValueError):
    """The body is well formed but over a configured size limit (413)."""


class IdempotencyConflict(ValueError):
    """An Idempotency-Key already names a job submitted with a different body (409)."""


class StoreMasterError(ValueError):
    """The Store Master file is missing, unreadable or lacks the required header (503)."""


class StorageError(RuntimeError):
    """The database could not record or read something: disk full, I/O error, locked (503)."""


class DatabaseUnavailable(StorageError):
    """The database did not answer within a call's deadline, or has not answered since: the
    call was cut off, or not tried (503 with Retry-After)."""


class DatabaseTimedOut(DatabaseUnavailable):
    """The call was cut off at its deadline (the database is slow or frozen, where a plain
    `DatabaseUnavailable` says it refuses or is known to be down)."""


class SubmissionOutcomeUnknown(StorageError):
    """The database stopped answering while a job's commit was under way, and could not be
    asked afterwards whether it was kept (503: a retry with the same Idempotency-Key is safe)."""


class TooManyOpenJobs(RuntimeError):
    """The client already has as many unfinished jobs as it may (429)."""


class RateLimited(RuntimeError):
    """The client submits faster than its rate limit allows (429 with Retry-After)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many submissions; retry in {retry_after} s")
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[RateLimited], tuple[int]]:
        # Rebuilt from its own argument when it crosses Ray, not from its message.
        return RateLimited, (self.retry_after,)


class ServiceBusy(RuntimeError):
    """The service holds as many unsettled images as it may; a later retry can pass (503)."""


class TrackerUnavailable(RuntimeError):
    """The job tracker did not answer a call within its deadline, or is dead or restarting
    (503 with Retry-After)."""


class NotDispatching(RuntimeError):
    """This service's tracker does not hold the dispatch lease: another cluster sharing the
    database dispatches, and only it can cancel (503 with Retry-After)."""


class JobAlreadyFinished(ValueError):
    """A cancel for a job that has already ended (409)."""
