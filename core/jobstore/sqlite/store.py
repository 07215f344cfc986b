"""Durable job state in SQLite (WAL): jobs, their images, and one result per image.

Not thread-safe by itself: the tracker drives one `SqliteStore` from a single thread. The unique
key on `results(job_id, idx)` is what makes each image settle exactly once, whatever retries,
restarts or duplicate reports happen above it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, ClassVar

from core.jobstore.base import JobStoreBase, database_errors, record_job
from core.jobstore.deadline import (
    CREATE_SECONDS_PER_IMAGE,
    DEFAULT_TIMEOUT_SECONDS,
    PROBE_INTERVAL_SECONDS,
    StoreDeadlines,
)
from core.jobstore.records import DueCallback, UnfinishedJob
from core.jobstore.rows import (
    IMAGES_WITH_VISITS,
    JOB_DETAIL_COLUMNS,
    detail_from_row,
    job_state,
    store_errors,
)
from core.jobstore.sqlite.calls import SqliteCalls
from core.jobstore.sqlite.reader import read_job_view
from core.jobstore.sqlite.schema import Transaction, open_database
from core.jobstore.sqlite.writes import SqliteWrites, job_for_key
from core.models import (
    ImageResult,
    JobDetail,
    JobState,
    JobStatus,
    JobSubmission,
    JobView,
)


class SqliteStore(JobStoreBase):
    """The job store in one SQLite file (WAL) on the head's disk: `make run`'s default."""

    database_error: ClassVar[type[Exception]] = sqlite3.Error

    def __init__(
        self,
        path: Path,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        probe_interval: float = PROBE_INTERVAL_SECONDS,
    ) -> None:
        self._db = open_database(path)
        self._calls = SqliteCalls(self._db, StoreDeadlines(timeout, probe_interval))
        self._node_numbers: dict[str, int] = {}

    def close(self) -> None:
        self._db.close()

    @database_errors(
        "record the job",
        extra_seconds=lambda submission, *_: submission.image_count * CREATE_SECONDS_PER_IMAGE,
    )
    def create_job(
        self,
        submission: JobSubmission,
        idempotency_key: str | None,
        failed_images: dict[int, str],
        client_id: str | None = None,
        request_hash: str | None = None,
    ) -> tuple[int, bool]:
        """As `JobStore.create_job` says."""
        with self._writing(durable=True) as writes:
            return record_job(
                writes, submission, idempotency_key, failed_images, client_id, request_hash
            )

    @database_errors("read the job of an idempotency key")
    def job_for_key(self, idempotency_key: str | None, request_hash: str | None) -> int | None:
        """The job recorded under this key, if any; `IdempotencyConflict` when `request_hash`
        is given and differs from the one recorded with it."""
        return job_for_key(self._db, idempotency_key, request_hash)

    def _guarded(self, extra_seconds: float) -> AbstractContextManager[None]:
        return self._calls.guarded(extra_seconds)

    @contextmanager
    def _writing(self, durable: bool) -> Iterator[SqliteWrites]:
        with self._transaction(durable):
            yield SqliteWrites(self._db, self._node_numbers)

    def _number_nodes(self, node_ids: set[str]) -> None:
        """As `JobStoreBase._number_nodes`: the number standing for each node id in
        `results.node`."""
        for node_id in node_ids - self._node_numbers.keys():
            self._db.execute("INSERT OR IGNORE INTO nodes (node_id) VALUES (?)", (node_id,))
            (number,) = self._db.execute(
                "SELECT id FROM nodes WHERE node_id = ?", (node_id,)
            ).fetchone()
            self._node_numbers[node_id] = number

    @database_errors("read a job's status")
    def job_view(self, job_id: int, client_id: str | None = None) -> JobView | None:
        return read_job_view(self._db, job_id, client_id)

    @database_errors("read a job")
    def job_detail(self, job_id: int, client_id: str | None = None) -> JobDetail | None:
        row = self._db.execute(
            f"SELECT {JOB_DETAIL_COLUMNS}, client_id FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None or (client_id is not None and row[-1] != client_id):
            return None
        return detail_from_row(row)

    @database_errors("read the recent jobs")
    def recent_jobs(
        self, client_id: str | None, offset: int, limit: int
    ) -> tuple[int, list[JobDetail]]:
        """Newest first, with the number of jobs in all (this client's only, when given)."""
        where, args = ("WHERE client_id = ?", (client_id,)) if client_id is not None else ("", ())
        scope = "" if client_id is None else f"client:{client_id}"
        counted = self._db.execute(
            "SELECT jobs FROM job_totals WHERE scope = ?", (scope,)
        ).fetchone()
        total = counted[0] if counted else 0
        rows = self._db.execute(
            f"SELECT {JOB_DETAIL_COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return int(total), [detail_from_row(row) for row in rows]

    @database_errors("read the open jobs")
    def admission_counts(self, client_id: str | None) -> tuple[int, int]:
        (open_jobs, unsettled) = self._db.execute(
            "SELECT COUNT(*) FILTER (WHERE client_id = ?),"
            " COALESCE(SUM(image_count - settled_count), 0)"
            " FROM jobs WHERE status = 'ongoing'",
            (client_id,),
        ).fetchone()
        return int(open_jobs), int(unsettled)

    @database_errors("read the job counts")
    def job_counts(self) -> dict[JobState, int]:
        rows = self._db.execute(
            "SELECT status, cancelled_at IS NOT NULL, COUNT(*) FROM jobs GROUP BY 1, 2"
        ).fetchall()
        counts: dict[JobState, int] = {}
        for status, cancelled, count in rows:
            state = job_state(status, bool(cancelled))
            counts[state] = counts.get(state, 0) + count
        return counts

    @database_errors("read the callbacks due")
    def callbacks_due(self, job_ids: Iterable[int] | None = None) -> list[DueCallback]:
        """Finished jobs whose callback is neither delivered nor given up on; all of them when
        `job_ids` is None (after a restart)."""
        query = (
            "SELECT id, callback_url, status, errors FROM jobs WHERE callback_url IS NOT NULL"
            " AND callback_done_at IS NULL AND status != ?"
        )
        args: tuple[Any, ...] = (JobStatus.ONGOING.value,)
        if job_ids is not None:
            wanted = tuple(job_ids)
            query += f" AND id IN ({', '.join('?' * len(wanted))})"
            args += wanted
        return [
            DueCallback(job_id, url, JobView(job_id, JobStatus(status), store_errors(errors)))
            for job_id, url, status, errors in self._db.execute(query, args)
        ]

    @database_errors("claim a job's callback")
    def claim_callback(self, job_id: int, holder: str) -> bool:
        """As `JobStore.claim_callback` says."""
        with self._transaction():
            claimed = self._db.execute(
                "UPDATE jobs SET callback_claimed_by = ? WHERE id = ?"
                " AND callback_done_at IS NULL AND EXISTS (SELECT 1 FROM leases"
                " WHERE name = 'dispatch' AND holder = ? AND expires_at > ?)",
                (holder, job_id, holder, time.time()),
            ).rowcount
        return claimed == 1

    @database_errors("record a job's callback")
    def mark_callback_done(self, job_id: int, when: float) -> None:
        with self._transaction():
            self._db.execute("UPDATE jobs SET callback_done_at = ? WHERE id = ?", (when, job_id))

    @database_errors("read the unfinished jobs")
    def unfinished_jobs(self) -> list[UnfinishedJob]:
        """The ongoing jobs, without their images: a restart reads those one job at a time."""
        return [
            UnfinishedJob(job_id, client_id, started_at is not None, cancelled_at is not None)
            for job_id, client_id, started_at, cancelled_at in self._db.execute(
                "SELECT id, client_id, started_at, cancelled_at FROM jobs WHERE status = ?"
                " ORDER BY id",
                (JobStatus.ONGOING.value,),
            )
        ]

    @database_errors("read a job's images")
    def job_images(self, job_id: int) -> tuple[list[str], bytearray]:
        """A job's image URLs in order, and a flag per image: 1 where it has a result."""
        urls = [
            url
            for (url,) in self._db.execute(
                "SELECT url FROM images WHERE job_id = ? ORDER BY idx", (job_id,)
            )
        ]
        settled = bytearray(len(urls))
        for (index,) in self._db.execute("SELECT idx FROM results WHERE job_id = ?", (job_id,)):
            settled[index] = 1
        return urls, settled

    @database_errors("read a page of results")
    def results_page(self, job_id: int, offset: int, limit: int) -> tuple[int, list[ImageResult]]:
        """Rows in image order (visit order, then URL order within a visit), and the total."""
        total_row = self._db.execute(
            "SELECT image_count FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        total = int(total_row[0]) if total_row else 0
        rows = self._db.execute(
            "SELECT i.idx, v.store_id, v.visit_time, i.url, r.width, r.height, r.error,"
            " r.processed_at, COALESCE(n.node_id, r.node_id)"
            f" FROM {IMAGES_WITH_VISITS}"
            " LEFT JOIN results r ON r.job_id = i.job_id AND r.idx = i.idx"
            " LEFT JOIN nodes n ON n.id = r.node"
            " WHERE i.job_id = ? AND i.idx >= ? ORDER BY i.idx LIMIT ?",
            (job_id, offset, limit),
        ).fetchall()
        return total, [ImageResult(*row) for row in rows]

    @database_errors("hold the dispatch lease")
    def hold_lease(self, holder: str, seconds: float) -> bool:
        """By this host's wall clock (every holder of a SQLite file runs on its host). A lease
        that ends further off than its whole length from now was set before the clock stepped
        back: it is over, or the only tracker would stand by for the size of the step."""
        now = time.time()
        with self._transaction():
            self._db.execute(
                "INSERT INTO leases (name, holder, expires_at, seconds)"
                " VALUES ('dispatch', ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_at = excluded.expires_at, seconds = excluded.seconds"
                " WHERE leases.holder = excluded.holder OR leases.expires_at < ?"
                " OR leases.expires_at > ? + leases.seconds",
                (holder, now + seconds, seconds, now, now),
            )
            (current,) = self._db.execute(
                "SELECT holder FROM leases WHERE name = 'dispatch'"
            ).fetchone()
        return bool(current == holder)

    @database_errors("release the dispatch lease")
    def release_lease(self, holder: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM leases WHERE name = 'dispatch' AND holder = ?", (holder,))

    def _transaction(self, durable: bool = False) -> Transaction:
        return Transaction(self._db, durable)
