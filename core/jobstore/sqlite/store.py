"""Durable job state in SQLite (WAL): jobs, their images, and one result per image.

Not thread-safe by itself: the tracker drives one `SqliteStore` from a single thread. The unique
key on `results(job_id, idx)` is what makes each image settle exactly once, whatever retries,
restarts or duplicate reports happen above it.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from core.errors import StorageError
from core.jobstore.deadline import CREATE_SECONDS_PER_IMAGE, PROBE_INTERVAL_SECONDS, StoreDeadlines
from core.jobstore.records import CancelMark, DueCallback, UnfinishedJob
from core.jobstore.rows import (
    IMAGES_WITH_VISITS,
    JOB_DETAIL_COLUMNS,
    UNSTORABLE_RESULT,
    detail_from_row,
    images_in_order,
    job_of_key,
    job_state,
    store_errors,
)
from core.jobstore.sqlite.calls import SqliteCalls
from core.jobstore.sqlite.schema import Transaction, open_database
from core.models import (
    JOB_CANCELLED,
    ImageOutcome,
    ImageResult,
    JobDetail,
    JobState,
    JobStatus,
    JobSubmission,
    JobView,
)
from core.text import safe_text

# An image keeps its first result. ON CONFLICT on the key, not OR IGNORE: that would also drop,
# silently, a row breaking NOT NULL, leaving its image unsettled for ever.
INSERT_RESULT = (
    "INSERT INTO results (job_id, idx, width, height, error, processed_at, node)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, idx) DO NOTHING"
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

P = ParamSpec("P")
R = TypeVar("R")

# A call's deadline (IMAGE_SERVICE_DATABASE_TIMEOUT sets the tracker's and the API's).
DEFAULT_TIMEOUT_SECONDS = 5.0


class _Guarded(Protocol):
    _calls: SqliteCalls


G = TypeVar("G", bound=_Guarded)


def database_errors(
    action: str, extra_seconds: Callable[..., float] | None = None
) -> Callable[[Callable[Concatenate[G, P], R]], Callable[Concatenate[G, P], R]]:
    """A store call under its deadline (`extra_seconds(*args)` more when given), whose
    database error becomes a StorageError saying what could not be done; every read and
    write goes through it."""

    def wrap(method: Callable[Concatenate[G, P], R]) -> Callable[Concatenate[G, P], R]:
        @functools.wraps(method)
        def call(store: G, *args: P.args, **kwargs: P.kwargs) -> R:
            extra = extra_seconds(*args) if extra_seconds is not None else 0.0
            try:
                with store._calls.guarded(extra):
                    return method(store, *args, **kwargs)
            except sqlite3.Error as exc:
                raise StorageError(f"could not {action}: {exc}") from exc

        return call

    return wrap


class SqliteStore:
    """The job store in one SQLite file (WAL) on the head's disk: `make run`'s default."""

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
        now = time.time()
        with self._transaction(durable=True):
            known = _job_for_key(self._db, idempotency_key, request_hash)
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
                    for index, (position, url) in enumerate(images_in_order(submission))
                ),
            )
            self._db.executemany(
                "INSERT INTO results (job_id, idx, error, processed_at) VALUES (?, ?, ?, ?)",
                ((job_id, index, reason, now) for index, reason in failed_images.items()),
            )
            if len(failed_images) == submission.image_count:
                self._finish_job(job_id)
        return job_id, True

    @database_errors("read the job of an idempotency key")
    def job_for_key(self, idempotency_key: str | None, request_hash: str | None) -> int | None:
        """The job recorded under this key, if any; `IdempotencyConflict` when `request_hash`
        is given and differs from the one recorded with it."""
        return _job_for_key(self._db, idempotency_key, request_hash)

    @database_errors("save results")
    def save_outcomes(
        self,
        outcomes: Sequence[ImageOutcome],
        finished_jobs: Iterable[int],
        started: Iterable[tuple[int, float]] = (),
        cancelled: Sequence[CancelMark] = (),
    ) -> list[ImageOutcome]:
        """As `JobStore.save_outcomes` says."""
        unstorable: list[ImageOutcome] = []
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

    @database_errors("read a job's status")
    def job_view(self, job_id: int, client_id: str | None = None) -> JobView | None:
        return read_job_view(self._db, job_id, client_id)

    @database_errors("read a job")
    def job_detail(self, job_id: int, client_id: str | None = None) -> JobDetail | None:
        return read_job_detail(self._db, job_id, client_id)

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


def _job_for_key(
    db: sqlite3.Connection, idempotency_key: str | None, request_hash: str | None
) -> int | None:
    if idempotency_key is None:
        return None
    query = "SELECT id, request_hash FROM jobs WHERE submission_key = ?"
    return job_of_key(db.execute(query, (idempotency_key,)).fetchone(), request_hash)


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
    return detail_from_row(row)


class StatusReader:
    """A read-only view of job statuses for processes beside the tracker's database.

    A job's row says `ongoing` from the commit that answers its submission until the commit
    that closes it, and only then its final status: reading it can never go backwards.
    WAL readers do not wait for the writer, and the lookup is by primary key: microseconds.
    """

    def __init__(self, path: Path, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        try:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StorageError(f"could not open {path}: {exc}") from exc
        self._calls = SqliteCalls(self._db, StoreDeadlines(timeout))

    @database_errors("read a job's status")
    def job_view(
        self, job_id: int, client_id: str | None = None, exact: bool = False
    ) -> JobView | None:
        return read_job_view(self._db, job_id, client_id, exact)
