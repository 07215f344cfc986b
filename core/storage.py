"""Durable job state in SQLite (WAL): jobs, their images, and one result per image.

Not thread-safe by itself: the tracker drives one `JobStore` from a single thread. The unique
key on `results(job_id, idx)` is what makes each image settle exactly once, whatever retries,
restarts or duplicate reports happen above it.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from core.models import (
    JOB_CANCELLED,
    ImageOutcome,
    ImageResult,
    JobDetail,
    JobState,
    JobStatus,
    JobSubmission,
    JobView,
    StoreError,
)
from core.text import safe_text

IMAGES_COLUMNS = """(
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    idx INTEGER NOT NULL,
    visit INTEGER NOT NULL,
    url TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID"""

SCHEMA = f"""
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
-- A visit's fields are stored once, not once per image: a job's size on disk follows its body.
CREATE TABLE IF NOT EXISTS visits (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    visit INTEGER NOT NULL,  -- position in the submission
    store_id TEXT NOT NULL,
    visit_time TEXT NOT NULL,
    PRIMARY KEY (job_id, visit)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS images {IMAGES_COLUMNS};
CREATE TABLE IF NOT EXISTS results (
    job_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    error TEXT,
    processed_at REAL NOT NULL,
    node_id TEXT,  -- before nodes had a table: the node's id itself
    node INTEGER,  -- nodes.id
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
-- Ray's node ids are 56 characters: stored once here, not once per result.
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL UNIQUE
);
"""

# Columns added after the first release; a database from before gets them on opening.
LATER_JOB_COLUMNS = {
    "client_id": "TEXT",
    "started_at": "REAL",  # the first image went to a worker
    "cancelled_at": "REAL",
    "request_hash": "TEXT",  # fingerprint of an Idempotency-Key submission
    "callback_url": "TEXT",
    "callback_done_at": "REAL",  # delivered, or given up on
    "settled_count": "INTEGER NOT NULL DEFAULT 0",
    "failed_count": "INTEGER NOT NULL DEFAULT 0",
}

# Progress counts kept by the database itself: exact whatever inserts are ignored as duplicates,
# and O(1) to read for a job of any size.
COUNT_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS results_count AFTER INSERT ON results BEGIN
    UPDATE jobs SET settled_count = settled_count + 1,
                    failed_count = failed_count + (NEW.error IS NOT NULL)
    WHERE id = NEW.job_id;
END;
"""

# Before visits had a table of their own, every image row carried its visit's fields.
SPLIT_VISITS = f"""
ALTER TABLE images RENAME TO images_with_visits;
CREATE TABLE images {IMAGES_COLUMNS};
INSERT INTO visits SELECT job_id, idx, store_id, visit_time FROM images_with_visits;
INSERT INTO images SELECT job_id, idx, idx, url FROM images_with_visits;
DROP TABLE images_with_visits;
"""

# An image with its visit's fields, as the queries below read it.
IMAGES_WITH_VISITS = "images i JOIN visits v ON v.job_id = i.job_id AND v.visit = i.visit"

INSERT_RESULT = (
    "INSERT OR IGNORE INTO results (job_id, idx, width, height, error, processed_at, node)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)

# What one bad row can raise when it is bound; the disk's own failures are OperationalError.
ROW_ERRORS = (
    sqlite3.InterfaceError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    OverflowError,
    UnicodeError,
    ValueError,
    TypeError,
)
UNSTORABLE_RESULT = "internal error: the image's result could not be stored"

# The WAL file is cut back to this size after a checkpoint, so it cannot stay large.
WAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024

JOB_DETAIL_COLUMNS = (
    "id, status, errors, image_count, settled_count, failed_count,"
    " created_at, started_at, finished_at, cancelled_at"
)


class StorageError(RuntimeError):
    """The database could not record or read something (disk full, I/O error, locked)."""


P = ParamSpec("P")
R = TypeVar("R")


def reads(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A read whose database error becomes a StorageError, as every write's does."""

    def wrap(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def read(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(*args, **kwargs)
            except sqlite3.Error as exc:
                raise StorageError(f"could not read {what}: {exc}") from exc

        return read

    return wrap


class IdempotencyConflict(ValueError):
    """An Idempotency-Key already names a job submitted with a different body."""


@dataclass(frozen=True, slots=True)
class DueCallback:
    job_id: int
    url: str
    view: JobView


@dataclass(frozen=True, slots=True)
class UnfinishedJob:
    """An ongoing job as found on disk; its images are read one job at a time (`job_images`)."""

    job_id: int
    client_id: str | None
    started: bool = False
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class CancelMark:
    """A cancel, placed in the stream of outcomes: `position` outcomes of the batch it is saved
    with settled before it. The stores left unfinished are those without a result then."""

    job_id: int
    when: float
    position: int = 0


class JobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash; only power loss can undo the
        # last commits, which costs at most re-processing those images. The commits a client
        # is told about (a job recorded, a cancel) are made durable (see `_transaction`).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._migrate()
        self._node_numbers: dict[str, int] = {}

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        image_columns = {row[1] for row in self._db.execute("PRAGMA table_info(images)")}
        result_columns = {row[1] for row in self._db.execute("PRAGMA table_info(results)")}
        with self._transaction():
            if "node" not in result_columns:
                self._db.execute("ALTER TABLE results ADD COLUMN node INTEGER")
            if "store_id" in image_columns:
                for statement in SPLIT_VISITS.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
            for name, kind in LATER_JOB_COLUMNS.items():
                if name not in columns:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            if "settled_count" not in columns:
                self._db.execute(
                    "UPDATE jobs SET"
                    " settled_count = (SELECT COUNT(*) FROM results r WHERE r.job_id = jobs.id),"
                    " failed_count = (SELECT COUNT(*) FROM results r"
                    "                 WHERE r.job_id = jobs.id AND r.error IS NOT NULL)"
                )
            self._db.execute(COUNT_TRIGGER)

    def close(self) -> None:
        self._db.close()

    def create_job(
        self,
        submission: JobSubmission,
        idempotency_key: str | None,
        failed_images: dict[int, str],
        client_id: str | None = None,
        request_hash: str | None = None,
    ) -> tuple[int, bool]:
        """Record a job with all its images in one transaction; `failed_images` (index to
        reason) settle at once. Returns `(job_id, created)`; a known key returns its old job,
        unless `request_hash` says the body differs: then `IdempotencyConflict`."""
        now = time.time()
        try:
            with self._transaction(durable=True):
                known = self.job_for_key(idempotency_key, request_hash)
                if known is not None:
                    return known, False
                cursor = self._db.execute(
                    "INSERT INTO jobs (submission_key, request_hash, status, image_count,"
                    " created_at, client_id, callback_url) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        idempotency_key,
                        request_hash,
                        JobStatus.ONGOING.value,
                        submission.image_count,
                        now,
                        client_id,
                        submission.callback_url,
                    ),
                )
                job_id = int(cursor.lastrowid or 0)
                self._db.executemany(
                    "INSERT INTO visits (job_id, visit, store_id, visit_time) VALUES (?, ?, ?, ?)",
                    (
                        (job_id, position, visit.store_id, visit.visit_time)
                        for position, visit in enumerate(submission.visits)
                    ),
                )
                self._db.executemany(
                    "INSERT INTO images (job_id, idx, visit, url) VALUES (?, ?, ?, ?)",
                    (
                        (job_id, index, position, url)
                        for index, (position, url) in enumerate(_flatten(submission))
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

    @reads("the job of an idempotency key")
    def job_for_key(self, idempotency_key: str | None, request_hash: str | None) -> int | None:
        """The job recorded under this key, if any; `IdempotencyConflict` when `request_hash`
        is given and differs from the one recorded with it."""
        if idempotency_key is None:
            return None
        row = self._db.execute(
            "SELECT id, request_hash FROM jobs WHERE submission_key = ?", (idempotency_key,)
        ).fetchone()
        if row is None:
            return None
        if request_hash is not None and row[1] != request_hash:
            raise IdempotencyConflict(
                f"this Idempotency-Key was used for job {row[0]} with a different body"
            )
        return int(row[0])

    def save_outcomes(
        self,
        outcomes: Sequence[ImageOutcome],
        finished_jobs: Iterable[int],
        started: Iterable[tuple[int, float]] = (),
        cancelled: Sequence[CancelMark] = (),
    ) -> list[ImageOutcome]:
        """In one transaction: mark jobs started (`(job_id, when)` pairs), store a batch of
        settled images with each cancel at its place among them, then close the jobs now fully
        settled. An image already settled keeps its first result. An outcome that cannot be
        stored is stored as a failure instead; those are returned."""
        unstorable: list[ImageOutcome] = []
        try:
            for node_id in {outcome.node_id for outcome in outcomes}:
                self._node_number(node_id)
            with self._transaction(durable=bool(cancelled)):
                self._db.executemany(
                    "UPDATE jobs SET started_at = ? WHERE id = ? AND started_at IS NULL",
                    ((when, job_id) for job_id, when in started),
                )
                done = 0
                for mark in sorted(cancelled, key=lambda mark: mark.position):
                    unstorable += self._insert_results(outcomes[done : mark.position])
                    done = max(done, mark.position)
                    self._cancel_job(mark.job_id, mark.when)
                unstorable += self._insert_results(outcomes[done:])
                for job_id in finished_jobs:
                    self._finish_job(job_id)
        except sqlite3.Error as exc:
            raise StorageError(f"could not save results: {exc}") from exc
        return unstorable

    def _node_number(self, node_id: str | None) -> int | None:
        """The number standing for a node id in `results.node`. Recorded in a commit of its
        own (before any batch that uses it), so a batch rolled back never orphans one."""
        if node_id is None:
            return None
        number = self._node_numbers.get(node_id)
        if number is None:
            if self._db.in_transaction:
                raise RuntimeError("a node is numbered outside any transaction")
            self._db.execute("INSERT OR IGNORE INTO nodes (node_id) VALUES (?)", (node_id,))
            (number,) = self._db.execute(
                "SELECT id FROM nodes WHERE node_id = ?", (node_id,)
            ).fetchone()
            self._node_numbers[node_id] = number
        return number

    def _insert_results(self, outcomes: Sequence[ImageOutcome]) -> list[ImageOutcome]:
        """Insert a batch; if some row cannot be bound, insert row by row and store each bad
        one as a failure, so that one image never holds back the others' results."""
        rows = [_result_row(outcome, self._node_number(outcome.node_id)) for outcome in outcomes]
        try:
            self._db.executemany(INSERT_RESULT, rows)
            return []
        except ROW_ERRORS:
            pass
        unstorable = []
        for outcome, row in zip(outcomes, rows, strict=True):
            try:
                self._db.execute(INSERT_RESULT, row)
            except ROW_ERRORS:
                unstorable.append(outcome)
                self._db.execute(
                    INSERT_RESULT,
                    (
                        outcome.job_id,
                        outcome.index,
                        None,
                        None,
                        UNSTORABLE_RESULT,
                        time.time(),
                        None,
                    ),
                )
        return unstorable

    def _cancel_job(self, job_id: int, when: float) -> None:
        """Record the cancel with one error entry per store that still has unsettled images:
        the entries `/api/status` shows once the job has ended."""
        entries = [
            {"store_id": store_id, "error": JOB_CANCELLED}
            for store_id, _first in self._db.execute(
                f"SELECT v.store_id, MIN(i.idx) FROM {IMAGES_WITH_VISITS}"
                " LEFT JOIN results r ON r.job_id = i.job_id AND r.idx = i.idx"
                " WHERE i.job_id = ? AND r.idx IS NULL"
                " GROUP BY v.store_id ORDER BY MIN(i.idx)",
                (job_id,),
            )
        ]
        self._db.execute(
            "UPDATE jobs SET cancelled_at = ?, errors = ?"
            " WHERE id = ? AND status = ? AND cancelled_at IS NULL",
            (when, json.dumps(entries), job_id, JobStatus.ONGOING.value),
        )

    def _finish_job(self, job_id: int) -> None:
        cancelled_at, saved_errors = self._db.execute(
            "SELECT cancelled_at, errors FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        # A cancelled job leads with its cancel entries; other stores show their first failure.
        errors = json.loads(saved_errors or "[]") if cancelled_at is not None else []
        named = {entry["store_id"] for entry in errors}
        for store_id, error, _first in self._db.execute(
            # SQLite gives the bare columns of the row holding MIN(): the first failure.
            f"SELECT v.store_id, r.error, MIN(i.idx) FROM {IMAGES_WITH_VISITS}"
            " JOIN results r ON r.job_id = i.job_id AND r.idx = i.idx"
            " WHERE i.job_id = ? AND r.error IS NOT NULL"
            " GROUP BY v.store_id ORDER BY MIN(i.idx)",
            (job_id,),
        ):
            if store_id not in named:
                errors.append({"store_id": store_id, "error": error})
        failed = bool(errors) or cancelled_at is not None
        status = JobStatus.FAILED if failed else JobStatus.COMPLETED
        self._db.execute(
            "UPDATE jobs SET status = ?, finished_at = ?, errors = ? WHERE id = ? AND status = ?",
            (status.value, time.time(), json.dumps(errors), job_id, JobStatus.ONGOING.value),
        )

    @reads("a job's status")
    def job_view(self, job_id: int, client_id: str | None = None) -> JobView | None:
        return read_job_view(self._db, job_id, client_id)

    @reads("a job")
    def job_detail(self, job_id: int, client_id: str | None = None) -> JobDetail | None:
        return read_job_detail(self._db, job_id, client_id)

    @reads("the recent jobs")
    def recent_jobs(
        self, client_id: str | None, offset: int, limit: int
    ) -> tuple[int, list[JobDetail]]:
        """Newest first, with the number of jobs in all (this client's only, when given)."""
        where, args = ("WHERE client_id = ?", (client_id,)) if client_id is not None else ("", ())
        (total,) = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()
        rows = self._db.execute(
            f"SELECT {JOB_DETAIL_COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return int(total), [_job_detail(row) for row in rows]

    @reads("the job counts")
    def job_counts(self) -> dict[JobState, int]:
        rows = self._db.execute(
            "SELECT status, cancelled_at IS NOT NULL, COUNT(*) FROM jobs GROUP BY 1, 2"
        ).fetchall()
        counts: dict[JobState, int] = {}
        for status, cancelled, count in rows:
            state = _job_state(status, bool(cancelled))
            counts[state] = counts.get(state, 0) + count
        return counts

    @reads("the callbacks due")
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

    def mark_callback_done(self, job_id: int, when: float) -> None:
        try:
            with self._transaction():
                self._db.execute(
                    "UPDATE jobs SET callback_done_at = ? WHERE id = ?", (when, job_id)
                )
        except sqlite3.Error as exc:
            raise StorageError(f"could not record the callback of job {job_id}: {exc}") from exc

    @reads("the unfinished jobs")
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

    @reads("a job's images")
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

    @reads("a page of results")
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

    def _transaction(self, durable: bool = False) -> _Transaction:
        return _Transaction(self._db, durable)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error: no half-written job or batch.

    A durable one commits with `synchronous=FULL`: the WAL is synced at its COMMIT, so not even
    a power loss undoes it (NORMAL syncs only at checkpoints)."""

    def __init__(self, db: sqlite3.Connection, durable: bool) -> None:
        self._db = db
        self._durable = durable

    def __enter__(self) -> None:
        if self._durable:
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        try:
            if exc_type is None:
                try:
                    self._db.execute("COMMIT")
                    return
                except sqlite3.Error:
                    self._rollback()
                    raise
            self._rollback()
        finally:
            if self._durable:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


def _flatten(submission: JobSubmission) -> Iterable[tuple[int, str]]:
    """Every image URL of the submission in order, with its visit's position."""
    for position, visit in enumerate(submission.visits):
        for url in visit.image_urls:
            yield position, url


def _result_row(o: ImageOutcome, node: int | None) -> tuple[Any, ...]:
    # Error texts quote origins and URLs: the last line of defence against unstorable text.
    error = None if o.error is None else safe_text(o.error)
    return (o.job_id, o.index, o.width, o.height, error, o.processed_at, node)


def read_job_view(
    db: sqlite3.Connection, job_id: int, client_id: str | None = None, exact: bool = False
) -> JobView | None:
    """The job's status; None if unknown, or if `client_id` is given and the job is another's.
    With `exact`, a `client_id` of None matches only a job submitted without API keys."""
    row = db.execute(
        "SELECT status, errors, client_id FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    if row is None or ((client_id is not None or exact) and row[2] != client_id):
        return None
    return JobView(job_id=job_id, status=JobStatus(row[0]), errors=store_errors(row[1]))


def read_job_detail(
    db: sqlite3.Connection, job_id: int, client_id: str | None = None
) -> JobDetail | None:
    row = db.execute(
        f"SELECT {JOB_DETAIL_COLUMNS}, client_id FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    if row is None or (client_id is not None and row[-1] != client_id):
        return None
    return _job_detail(row)


def _job_detail(row: Sequence[Any]) -> JobDetail:
    (job_id, status, errors, total, settled, failed, created, started, finished, cancelled) = row[
        :10
    ]
    state = _job_state(status, cancelled is not None)
    return JobDetail(
        job_id=job_id,
        state=state,
        total=total,
        done=settled - failed,
        failed=failed,
        created_at=created,
        started_at=started,
        finished_at=finished,
        cancelled_at=cancelled,
        errors=() if status == JobStatus.ONGOING.value else store_errors(errors),
    )


def store_errors(errors_json: str | None) -> tuple[StoreError, ...]:
    """The `errors` column: per-store entries, as saved when the job ended or was cancelled."""
    return tuple(StoreError(**entry) for entry in json.loads(errors_json or "[]"))


def _job_state(status: str, cancelled: bool) -> JobState:
    if not cancelled:
        return JobState(status)
    return JobState.CANCELLING if status == JobStatus.ONGOING.value else JobState.CANCELLED


class StatusReader:
    """A read-only view of job statuses for processes beside the tracker's database.

    A job's row says `ongoing` from the commit that answers its submission until the commit
    that closes it, and only then its final status: reading it can never go backwards.
    WAL readers do not wait for the writer, and the lookup is by primary key: microseconds.
    """

    def __init__(self, path: Path) -> None:
        try:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StorageError(f"could not open {path}: {exc}") from exc

    @reads("a job's status")
    def job_view(
        self, job_id: int, client_id: str | None = None, exact: bool = False
    ) -> JobView | None:
        return read_job_view(self._db, job_id, client_id, exact)
