"""Durable job state in SQLite (WAL): jobs, their images, and one result per image.

Not thread-safe by itself: the tracker drives one `JobStore` from a single thread. The unique
key on `results(job_id, idx)` is what makes each image settle exactly once, whatever retries,
restarts or duplicate reports happen above it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.models import (
    ImageOutcome,
    ImageResult,
    JobStatus,
    JobSubmission,
    JobView,
    StoreError,
    Visit,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an id is never handed out twice
    submission_key TEXT UNIQUE,
    status TEXT NOT NULL,
    image_count INTEGER NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    errors TEXT,
    client_id TEXT  -- who submitted it, when API keys are on; NULL otherwise
);
CREATE INDEX IF NOT EXISTS jobs_ongoing ON jobs (status) WHERE status = 'ongoing';
CREATE TABLE IF NOT EXISTS images (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    idx INTEGER NOT NULL,
    store_id TEXT NOT NULL,
    visit_time TEXT NOT NULL,
    url TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (
    job_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    error TEXT,
    processed_at REAL NOT NULL,
    node_id TEXT,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
"""


class StorageError(RuntimeError):
    """The database could not record something (disk full, I/O error, locked)."""


@dataclass(frozen=True, slots=True)
class StoredImage:
    index: int
    store_id: str
    url: str


@dataclass(frozen=True, slots=True)
class UnfinishedJob:
    """An ongoing job as found on disk: its images and which of them are already settled."""

    job_id: int
    images: tuple[StoredImage, ...]
    settled: frozenset[int]
    client_id: str | None


class JobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash; only power loss can undo the
        # last commits, which costs at most re-processing those images.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "client_id" not in columns:  # a database from before API keys
            self._db.execute("ALTER TABLE jobs ADD COLUMN client_id TEXT")

    def close(self) -> None:
        self._db.close()

    def create_job(
        self,
        submission: JobSubmission,
        submission_key: str | None,
        failed_images: dict[int, str],
        client_id: str | None = None,
    ) -> tuple[int, bool]:
        """Record a job with all its images in one transaction; `failed_images` (index to
        reason) settle at once. Returns `(job_id, created)`; a known key returns its old job."""
        now = time.time()
        try:
            with self._transaction():
                if submission_key is not None:
                    row = self._db.execute(
                        "SELECT id FROM jobs WHERE submission_key = ?", (submission_key,)
                    ).fetchone()
                    if row is not None:
                        return int(row[0]), False
                cursor = self._db.execute(
                    "INSERT INTO jobs (submission_key, status, image_count, created_at, client_id)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        submission_key,
                        JobStatus.ONGOING.value,
                        submission.image_count,
                        now,
                        client_id,
                    ),
                )
                job_id = int(cursor.lastrowid or 0)
                self._db.executemany(
                    "INSERT INTO images (job_id, idx, store_id, visit_time, url)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        (job_id, index, visit.store_id, visit.visit_time, url)
                        for index, (visit, url) in enumerate(_flatten(submission))
                    ),
                )
                self._db.executemany(
                    "INSERT INTO results (job_id, idx, error, processed_at) VALUES (?, ?, ?, ?)",
                    ((job_id, index, reason, now) for index, reason in failed_images.items()),
                )
                if len(failed_images) == submission.image_count:
                    self._finish_job(job_id)
        except sqlite3.Error as exc:
            raise StorageError(f"could not record the job: {exc}") from exc
        return job_id, True

    def save_outcomes(self, outcomes: Sequence[ImageOutcome], finished_jobs: Iterable[int]) -> None:
        """Store a batch of settled images, then close the jobs that are now fully settled.
        An image already settled keeps its first result."""
        try:
            with self._transaction():
                self._db.executemany(
                    "INSERT OR IGNORE INTO results"
                    " (job_id, idx, width, height, error, processed_at, node_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        (o.job_id, o.index, o.width, o.height, o.error, o.processed_at, o.node_id)
                        for o in outcomes
                    ),
                )
                for job_id in finished_jobs:
                    self._finish_job(job_id)
        except sqlite3.Error as exc:
            raise StorageError(f"could not save results: {exc}") from exc

    def _finish_job(self, job_id: int) -> None:
        errors = [
            {"store_id": store_id, "error": error}
            for store_id, error, _first in self._db.execute(
                # SQLite gives the bare columns of the row holding MIN(): the first failure.
                "SELECT i.store_id, r.error, MIN(i.idx) FROM images i"
                " JOIN results r ON r.job_id = i.job_id AND r.idx = i.idx"
                " WHERE i.job_id = ? AND r.error IS NOT NULL"
                " GROUP BY i.store_id ORDER BY MIN(i.idx)",
                (job_id,),
            )
        ]
        status = JobStatus.FAILED if errors else JobStatus.COMPLETED
        self._db.execute(
            "UPDATE jobs SET status = ?, finished_at = ?, errors = ? WHERE id = ? AND status = ?",
            (status.value, time.time(), json.dumps(errors), job_id, JobStatus.ONGOING.value),
        )

    def job_view(self, job_id: int, client_id: str | None = None) -> JobView | None:
        return read_job_view(self._db, job_id, client_id)

    def unfinished_jobs(self) -> list[UnfinishedJob]:
        jobs = []
        for job_id, client_id in self._db.execute(
            "SELECT id, client_id FROM jobs WHERE status = ? ORDER BY id",
            (JobStatus.ONGOING.value,),
        ).fetchall():
            images = tuple(
                StoredImage(index, store_id, url)
                for index, store_id, url in self._db.execute(
                    "SELECT idx, store_id, url FROM images WHERE job_id = ? ORDER BY idx", (job_id,)
                )
            )
            settled = frozenset(
                index
                for (index,) in self._db.execute(
                    "SELECT idx FROM results WHERE job_id = ?", (job_id,)
                )
            )
            jobs.append(UnfinishedJob(job_id, images, settled, client_id))
        return jobs

    def results_page(self, job_id: int, offset: int, limit: int) -> tuple[int, list[ImageResult]]:
        """Rows in image order (visit order, then URL order within a visit), and the total."""
        total_row = self._db.execute(
            "SELECT image_count FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        total = int(total_row[0]) if total_row else 0
        rows = self._db.execute(
            "SELECT i.idx, i.store_id, i.visit_time, i.url, r.width, r.height, r.error,"
            " r.processed_at, r.node_id"
            " FROM images i LEFT JOIN results r ON r.job_id = i.job_id AND r.idx = i.idx"
            " WHERE i.job_id = ? AND i.idx >= ? ORDER BY i.idx LIMIT ?",
            (job_id, offset, limit),
        ).fetchall()
        return total, [ImageResult(*row) for row in rows]

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error: no half-written job or batch."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


def _flatten(submission: JobSubmission) -> Iterable[tuple[Visit, str]]:
    for visit in submission.visits:
        for url in visit.image_urls:
            yield visit, url


def read_job_view(
    db: sqlite3.Connection, job_id: int, client_id: str | None = None
) -> JobView | None:
    """The job's status; None if unknown, or if `client_id` is given and the job is another's."""
    row = db.execute(
        "SELECT status, errors, client_id FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    if row is None or (client_id is not None and row[2] != client_id):
        return None
    errors = tuple(StoreError(**entry) for entry in json.loads(row[1] or "[]"))
    return JobView(job_id=job_id, status=JobStatus(row[0]), errors=errors)


class StatusReader:
    """A read-only view of job statuses for processes beside the tracker's database.

    A job's row says `ongoing` from the commit that answers its submission until the commit
    that closes it, and only then its final status: reading it can never go backwards.
    WAL readers do not wait for the writer, and the lookup is by primary key: microseconds.
    """

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def job_view(self, job_id: int, client_id: str | None = None) -> JobView | None:
        try:
            return read_job_view(self._db, job_id, client_id)
        except sqlite3.Error as exc:
            raise StorageError(f"could not read job {job_id}: {exc}") from exc
