"""The job store as the tracker and the API see it, whichever database holds it: SQLite on the
head's disk (the default, `SqliteStore`) or PostgreSQL for clusters (`PostgresStore`, chosen by
`IMAGE_SERVICE_DATABASE_URL`). The backend is chosen here only (`open_store`,
`open_status_reader`), and imported only when chosen: a SQLite deployment never loads psycopg.

Both give the same guarantees: a job is committed with all its images before its id is
answered; each image has at most one result (its primary key), whatever retries, restarts or
duplicate reports happen above; progress counts are kept by the database itself; one tracker
at a time holds the dispatch lease.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from core.jobstore.deadline import PROBE_INTERVAL_SECONDS
from core.jobstore.records import CancelMark, DueCallback, UnfinishedJob
from core.models import ImageOutcome, ImageResult, JobDetail, JobState, JobSubmission, JobView
from core.settings import Settings


class JobStore(Protocol):
    def close(self) -> None: ...

    def create_job(
        self,
        submission: JobSubmission,
        idempotency_key: str | None,
        failed_images: dict[int, str],
        client_id: str | None = None,
        request_hash: str | None = None,
    ) -> tuple[int, bool]:
        """Record a job with all its images in one durable transaction; `failed_images` (index
        to reason) settle at once. Returns `(job_id, created)`; a known key returns its old job,
        unless `request_hash` says the body differs: then `IdempotencyConflict`."""
        ...

    def job_for_key(self, idempotency_key: str | None, request_hash: str | None) -> int | None: ...

    def save_outcomes(
        self,
        outcomes: Sequence[ImageOutcome],
        finished_jobs: Iterable[int],
        started: Iterable[tuple[int, float]] = (),
        cancelled: Sequence[CancelMark] = (),
    ) -> list[ImageOutcome]:
        """In one transaction: mark jobs started, store a batch of settled images with each
        cancel at its place among them, then close the jobs now fully settled. An image already
        settled keeps its first result. Outcomes that could not be stored are stored as
        failures instead, and returned."""
        ...

    def job_view(self, job_id: int, client_id: str | None = None) -> JobView | None: ...

    def job_detail(self, job_id: int, client_id: str | None = None) -> JobDetail | None: ...

    def recent_jobs(
        self, client_id: str | None, offset: int, limit: int
    ) -> tuple[int, list[JobDetail]]: ...

    def job_counts(self) -> dict[JobState, int]: ...

    def admission_counts(self, client_id: str | None) -> tuple[int, int]:
        """The unfinished jobs of `client_id`, and the unsettled images of every job: what a
        tracker that holds none of them counts against the limits."""
        ...

    def callbacks_due(self, job_ids: Iterable[int] | None = None) -> list[DueCallback]: ...

    def claim_callback(self, job_id: int, holder: str) -> bool:
        """Claim the job's callback for sending, for `holder`: True only while `holder` holds
        the dispatch lease (by the store's clock) and the callback is still due. So a tracker
        that lost the lease never sends one the new holder sends too."""
        ...

    def mark_callback_done(self, job_id: int, when: float) -> None: ...

    def unfinished_jobs(self) -> list[UnfinishedJob]: ...

    def job_images(self, job_id: int) -> tuple[list[str], bytearray]: ...

    def results_page(
        self, job_id: int, offset: int, limit: int
    ) -> tuple[int, list[ImageResult]]: ...

    def hold_lease(self, holder: str, seconds: float) -> bool:
        """Take the dispatch lease for `holder`, or extend it if `holder` has it, for `seconds`
        from now; False while another holder's lease has not expired."""
        ...

    def release_lease(self, holder: str) -> None:
        """Give the lease up at once, if `holder` has it."""
        ...


class StatusReader(Protocol):
    """Job statuses for the processes beside the tracker (the edge, the API replicas): reads
    only, never a migration."""

    # True: the database is a file on this node, read in microseconds (on the caller's event
    # loop), and only by a process on the tracker's node. False: a server, read from any node
    # in a round trip (in a thread).
    local: bool

    def job_view(
        self, job_id: int, client_id: str | None = None, exact: bool = False
    ) -> JobView | None:
        """The job's status; None if unknown, or if `client_id` is given and the job is
        another's. With `exact`, a `client_id` of None matches only a job submitted without
        API keys. StorageError when the database cannot be read (a SQLite file not on this
        node, or not created yet), DatabaseUnavailable when it does not answer in time."""
        ...

    def close(self) -> None: ...


def open_store(
    settings: Settings,
    timeout: float | None = None,
    max_connections: int | None = None,
    probe_interval: float = PROBE_INTERVAL_SECONDS,
) -> JobStore:
    """The store the settings name: PostgreSQL when `database_url` is set, else SQLite. Its
    calls are cut off past `timeout` seconds (`database_timeout` unless given); while the
    database is not answering, one call every `probe_interval` seconds tries it (0: every
    call); a PostgreSQL store opens at most `max_connections` (its pool's default unless given)."""
    seconds = settings.database_timeout if timeout is None else timeout
    if settings.database_url:
        # Imported here so that psycopg loads only where PostgreSQL is used.
        from core.jobstore.postgres.connection import POOL_MAX_SIZE
        from core.jobstore.postgres.store import PostgresStore

        return PostgresStore(
            settings.database_url, seconds, max_connections or POOL_MAX_SIZE, probe_interval
        )
    from core.jobstore.sqlite.store import SqliteStore

    return SqliteStore(settings.database_path, seconds, probe_interval)


def open_status_reader(settings: Settings) -> StatusReader:
    """The statuses of the store the settings name, read-only, its calls cut off past
    `database_timeout`. Opens nothing yet: the first read does."""
    if settings.database_url:
        from core.jobstore.postgres.reader import PostgresStatusReader

        return PostgresStatusReader(settings.database_url, settings.database_timeout)
    from core.jobstore.sqlite.reader import SqliteStatusReader

    return SqliteStatusReader(settings.database_path, settings.database_timeout)
