"""Durable job state in PostgreSQL: the same jobs, images and one result per image as the
SQLite store (`SqliteStore`), for clusters whose jobs must outlive the head node's disk.

Thread-safe: every call takes a connection from a small pool and is one transaction. The
primary key of `results(job_id, idx)` with `ON CONFLICT DO NOTHING` is what makes each image
settle exactly once, whatever retries, restarts, duplicate reports or second stores happen.

Every commit is durable (PostgreSQL's default, `synchronous_commit=on`), result batches too:
unlike SQLite beside the tracker, this server can crash or fail over while the tracker lives
on, and a batch it lost would leave a job the tracker thinks finished `ongoing` for ever.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar

import psycopg

from core.errors import (
    DatabaseUnavailable,
    StorageError,
    SubmissionOutcomeUnknown,
)
from core.jobstore.base import JobStoreBase, database_errors, record_job
from core.jobstore.deadline import (
    CREATE_SECONDS_PER_IMAGE,
    DEFAULT_TIMEOUT_SECONDS,
    PROBE_INTERVAL_SECONDS,
)
from core.jobstore.postgres.connection import POOL_MAX_SIZE, Connection, PostgresConnections
from core.jobstore.postgres.schema import migrate
from core.jobstore.postgres.writes import PostgresWrites, storable
from core.jobstore.postgres.writes import job_for_key as _job_for_key
from core.jobstore.records import DueCallback, UnfinishedJob
from core.jobstore.rows import (
    JOB_DETAIL_COLUMNS,
    JOB_VIEW_COLUMNS,
    detail_from_row,
    job_state,
    store_errors,
    view_from_row,
)
from core.models import (
    ImageResult,
    JobDetail,
    JobState,
    JobStatus,
    JobSubmission,
    JobView,
)


class PostgresStore(JobStoreBase):
    """The job store in a PostgreSQL database (`IMAGE_SERVICE_DATABASE_URL`).

    Each call takes a pooled connection in autocommit: a write of several statements is one
    explicit transaction, rolled back on any error; a read needs none, each statement seeing
    the latest commits as SQLite's reads do, without the round trips of BEGIN and COMMIT."""

    database_error: ClassVar[type[Exception]] = psycopg.Error

    def __init__(
        self,
        url: str,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_connections: int = POOL_MAX_SIZE,
        probe_interval: float = PROBE_INTERVAL_SECONDS,
    ) -> None:
        """`DatabaseUnavailable` if the server does not answer within `timeout`. A
        `probe_interval` of 0: calls are never refused while the database is not answering."""
        self._connections = PostgresConnections(url, timeout, max_connections, probe_interval)
        try:
            with self._connection() as db:
                migrate(db)
        except BaseException as exc:
            self._connections.close()
            if isinstance(exc, psycopg.Error):
                raise StorageError(f"could not open the job database: {exc}") from exc
            raise
        self._node_numbers: dict[str, int] = {}

    def close(self) -> None:
        self._connections.close()

    def _connection(
        self, timeout: float | None = None, probe: bool = False
    ) -> AbstractContextManager[Connection]:
        """As `PostgresConnections.connection`."""
        return self._connections.connection(timeout, probe)

    @database_errors("record the job")
    def create_job(
        self,
        submission: JobSubmission,
        idempotency_key: str | None,
        failed_images: dict[int, str],
        client_id: str | None = None,
        request_hash: str | None = None,
    ) -> tuple[int, bool]:
        """As `JobStore.create_job` says."""
        timeout = (
            self._connections.deadlines.timeout + submission.image_count * CREATE_SECONDS_PER_IMAGE
        )
        committing = False
        try:
            with self._connection(timeout) as db:
                with db.transaction():
                    db.execute(
                        "SELECT set_config('statement_timeout', %s, true)",
                        (str(round(timeout * 1000)),),
                    )
                    created = self._insert_job(
                        db, submission, idempotency_key, failed_images, client_id, request_hash
                    )
                    # An error from here on comes from COMMIT: its outcome is unknown.
                    committing = created[1]
                return created
        except DatabaseUnavailable:
            if not committing:
                raise  # rolled back: nothing was kept
            return self._after_unknown_commit(idempotency_key, request_hash)

    def _after_unknown_commit(
        self, idempotency_key: str | None, request_hash: str | None
    ) -> tuple[int, bool]:
        """The connection was lost during COMMIT: the job was kept or not, and only the
        database can say which. Asked once more (a probe, even while it is taken as down)."""
        if idempotency_key is None:
            raise SubmissionOutcomeUnknown(
                "the database stopped answering while the job was being committed, and it may "
                "have been kept: look for the job in GET /api/jobs before submitting again"
            )
        try:
            with self._connection(probe=True) as db:
                known = _job_for_key(db, idempotency_key, request_hash)
        except (psycopg.Error, StorageError) as exc:
            raise SubmissionOutcomeUnknown(
                "the database stopped answering while the job was being committed, and it may "
                "have been kept: a retry with the same Idempotency-Key header is safe; without "
                "one, look for the job in GET /api/jobs before submitting again"
            ) from exc
        if known is None:
            raise DatabaseUnavailable("the job database stopped answering; nothing was kept")
        return known, True

    def _insert_job(
        self,
        db: Connection,
        submission: JobSubmission,
        idempotency_key: str | None,
        failed_images: dict[int, str],
        client_id: str | None,
        request_hash: str | None,
    ) -> tuple[int, bool]:
        return record_job(
            PostgresWrites(db, self._node_numbers),
            submission,
            idempotency_key,
            failed_images,
            client_id,
            request_hash,
        )

    @database_errors("read the job of an idempotency key")
    def job_for_key(self, idempotency_key: str | None, request_hash: str | None) -> int | None:
        """The job recorded under this key, if any; `IdempotencyConflict` when `request_hash`
        is given and differs from the one recorded with it."""
        if idempotency_key is None:
            return None
        with self._connection() as db:
            return _job_for_key(db, idempotency_key, request_hash)

    @contextmanager
    def _writing(self, durable: bool) -> Iterator[PostgresWrites]:
        # Every commit here is durable (see the module's docstring): `durable` changes nothing.
        with self._connection() as db, db.transaction():
            yield PostgresWrites(db, self._node_numbers)

    def _number_nodes(self, node_ids: set[str]) -> None:
        """Number the nodes not numbered yet, in a commit of their own (before any batch that
        uses them), so a batch rolled back never leaves a number behind that names nothing."""
        new = [node for node in node_ids if node not in self._node_numbers and storable(node)]
        if not new:
            return
        with self._connection() as db:
            db.execute(
                "INSERT INTO nodes (node_id) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                (new,),
            )
            # A statement of its own: it sees a number another store committed meanwhile.
            rows = db.execute(
                "SELECT node_id, id FROM nodes WHERE node_id = ANY(%s::text[])", (new,)
            ).fetchall()
        self._node_numbers.update({str(node): int(number) for node, number in rows})

    @database_errors("read a job's status")
    def job_view(
        self, job_id: int, client_id: str | None = None, exact: bool = False
    ) -> JobView | None:
        """The job's status; None if unknown, or if `client_id` is given and the job is
        another's. With `exact`, a `client_id` of None matches only a job submitted without
        API keys."""
        with self._connection() as db:
            row = db.execute(
                f"SELECT {JOB_VIEW_COLUMNS} FROM jobs WHERE id = %s", (job_id,)
            ).fetchone()
        return view_from_row(job_id, row, client_id, exact)

    @database_errors("read a job")
    def job_detail(self, job_id: int, client_id: str | None = None) -> JobDetail | None:
        with self._connection() as db:
            row = db.execute(
                f"SELECT {JOB_DETAIL_COLUMNS}, client_id FROM jobs WHERE id = %s", (job_id,)
            ).fetchone()
        if row is None or (client_id is not None and row[-1] != client_id):
            return None
        return detail_from_row(row)

    @database_errors("read the recent jobs")
    def recent_jobs(
        self, client_id: str | None, offset: int, limit: int
    ) -> tuple[int, list[JobDetail]]:
        """Newest first, with the number of jobs in all (this client's only, when given)."""
        where, args = ("WHERE client_id = %s", (client_id,)) if client_id is not None else ("", ())
        scope = "" if client_id is None else f"client:{client_id}"
        with self._connection() as db:
            count = db.execute("SELECT jobs FROM job_totals WHERE scope = %s", (scope,)).fetchone()
            rows = db.execute(
                f"SELECT {JOB_DETAIL_COLUMNS} FROM jobs {where} ORDER BY id DESC"
                " LIMIT %s OFFSET %s",
                (*args, limit, offset),
            ).fetchall()
        return (int(count[0]) if count else 0), [detail_from_row(row) for row in rows]

    @database_errors("read the open jobs")
    def admission_counts(self, client_id: str | None) -> tuple[int, int]:
        with self._connection() as db:
            row = db.execute(
                "SELECT COUNT(*) FILTER (WHERE client_id = %s),"
                " COALESCE(SUM(image_count - settled_count), 0)"
                " FROM jobs WHERE status = 'ongoing'",
                (client_id,),
            ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    @database_errors("read the job counts")
    def job_counts(self) -> dict[JobState, int]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT status, cancelled_at IS NOT NULL, COUNT(*) FROM jobs GROUP BY 1, 2"
            ).fetchall()
        counts: dict[JobState, int] = {}
        for status, cancelled, count in rows:
            state = job_state(status, bool(cancelled))
            counts[state] = counts.get(state, 0) + int(count)
        return counts

    @database_errors("read the callbacks due")
    def callbacks_due(self, job_ids: Iterable[int] | None = None) -> list[DueCallback]:
        """Finished jobs whose callback is neither delivered nor given up on; all of them when
        `job_ids` is None (after a restart)."""
        query = (
            "SELECT id, callback_url, status, errors FROM jobs WHERE callback_url IS NOT NULL"
            " AND callback_done_at IS NULL AND status != %s"
        )
        args: tuple[Any, ...] = (JobStatus.ONGOING.value,)
        if job_ids is not None:
            query += " AND id = ANY(%s::bigint[])"
            args += (list(job_ids),)
        with self._connection() as db:
            rows = db.execute(query + " ORDER BY id", args).fetchall()
        return [
            DueCallback(job_id, url, JobView(job_id, JobStatus(status), store_errors(errors)))
            for job_id, url, status, errors in rows
        ]

    @database_errors("claim a job's callback")
    def claim_callback(self, job_id: int, holder: str) -> bool:
        """As `JobStore.claim_callback` says; the lease by the database's clock."""
        with self._connection() as db:
            row = db.execute(
                "UPDATE jobs SET callback_claimed_by = %s WHERE id = %s"
                " AND callback_done_at IS NULL AND EXISTS (SELECT 1 FROM leases"
                " WHERE name = 'dispatch' AND holder = %s AND expires_at > clock_timestamp())"
                " RETURNING id",
                (holder, job_id, holder),
            ).fetchone()
        return row is not None

    @database_errors("record a job's callback")
    def mark_callback_done(self, job_id: int, when: float) -> None:
        with self._connection() as db:
            db.execute("UPDATE jobs SET callback_done_at = %s WHERE id = %s", (when, job_id))

    @database_errors("read the unfinished jobs")
    def unfinished_jobs(self) -> list[UnfinishedJob]:
        """The ongoing jobs, without their images: a restart reads those one job at a time."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT id, client_id, started_at, cancelled_at FROM jobs WHERE status = %s"
                " ORDER BY id",
                (JobStatus.ONGOING.value,),
            ).fetchall()
        return [
            UnfinishedJob(job_id, client_id, started_at is not None, cancelled_at is not None)
            for job_id, client_id, started_at, cancelled_at in rows
        ]

    @database_errors("read a job's images")
    def job_images(self, job_id: int) -> tuple[list[str], bytearray]:
        """A job's image URLs in order, and a flag per image: 1 where it has a result."""
        with self._connection() as db:
            urls = [
                str(url)
                for (url,) in db.execute(
                    "SELECT url FROM images WHERE job_id = %s ORDER BY idx", (job_id,)
                )
            ]
            settled = bytearray(len(urls))
            for (index,) in db.execute("SELECT idx FROM results WHERE job_id = %s", (job_id,)):
                settled[index] = 1
        return urls, settled

    @database_errors("read a page of results")
    def results_page(self, job_id: int, offset: int, limit: int) -> tuple[int, list[ImageResult]]:
        """Rows in image order (visit order, then URL order within a visit), and the total."""
        with self._connection() as db:
            total_row = db.execute(
                "SELECT image_count FROM jobs WHERE id = %s", (job_id,)
            ).fetchone()
            # The page's images first, then their joins: without statistics on a new job the
            # planner would join all the job's images and sort them (14 ms for a page of 1,000
            # of 10,000, against 3 ms this way).
            rows = db.execute(
                "SELECT i.idx, v.store_id, v.visit_time, i.url, r.width, r.height, r.error,"
                " r.processed_at, n.node_id"
                " FROM (SELECT * FROM images WHERE job_id = %s AND idx >= %s"
                "       ORDER BY idx LIMIT %s) AS i"
                " JOIN visits v ON v.job_id = i.job_id AND v.visit = i.visit"
                " LEFT JOIN results r ON r.job_id = i.job_id AND r.idx = i.idx"
                " LEFT JOIN nodes n ON n.id = r.node"
                " ORDER BY i.idx",
                (job_id, offset, limit),
            ).fetchall()
        total = int(total_row[0]) if total_row else 0
        return total, [ImageResult(*row) for row in rows]

    @database_errors("hold the dispatch lease")
    def hold_lease(self, holder: str, seconds: float) -> bool:
        """By the database's clock, not this host's: trackers on hosts whose clocks disagree
        still agree on when a lease expires."""
        with self._connection() as db:
            row = db.execute(
                "INSERT INTO leases (name, holder, expires_at)"
                " VALUES ('dispatch', %s, clock_timestamp() + make_interval(secs => %s))"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_at = excluded.expires_at"
                " WHERE leases.holder = excluded.holder OR leases.expires_at < clock_timestamp()"
                " RETURNING holder",
                (holder, seconds),
            ).fetchone()
        return row is not None

    @database_errors("release the dispatch lease")
    def release_lease(self, holder: str) -> None:
        with self._connection() as db:
            db.execute("DELETE FROM leases WHERE name = 'dispatch' AND holder = %s", (holder,))
