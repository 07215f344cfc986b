"""What the SQLite store writes inside a transaction, in SQLite's dialect (`JobWrites`): the
rules that put these statements together are shared with PostgreSQL's (`core.jobstore.base`)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from core.jobstore.base import JobWrites
from core.jobstore.rows import IMAGES_WITH_VISITS, UNSTORABLE_RESULT, images_in_order, job_of_key
from core.models import ImageOutcome, JobStatus, JobSubmission
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


class SqliteWrites(JobWrites):
    """The statements of one transaction on `db`; `node_numbers` holds every node a batch
    names (`SqliteStore` numbers them first)."""

    def __init__(self, db: sqlite3.Connection, node_numbers: Mapping[str, int]) -> None:
        self._db = db
        self._node_numbers = node_numbers

    def job_for_key(self, idempotency_key: str | None, request_hash: str | None) -> int | None:
        return job_for_key(self._db, idempotency_key, request_hash)

    def insert_job(
        self,
        submission: JobSubmission,
        idempotency_key: str | None,
        request_hash: str | None,
        client_id: str | None,
        now: float,
    ) -> int | None:
        # No race to lose: BEGIN IMMEDIATE holds off every other writer since the key's lookup.
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
        return int(cursor.lastrowid or 0)

    def insert_images(self, job_id: int, submission: JobSubmission) -> None:
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

    def insert_failures(self, job_id: int, failed_images: dict[int, str], now: float) -> None:
        self._db.executemany(
            "INSERT INTO results (job_id, idx, error, processed_at) VALUES (?, ?, ?, ?)",
            ((job_id, index, reason, now) for index, reason in failed_images.items()),
        )

    def mark_started(self, started: Sequence[tuple[int, float]]) -> None:
        self._db.executemany(
            "UPDATE jobs SET started_at = ? WHERE id = ? AND started_at IS NULL",
            ((when, job_id) for job_id, when in started),
        )

    def insert_results(self, outcomes: Sequence[ImageOutcome]) -> list[ImageOutcome]:
        """As `JobWrites.insert_results`: the batch at once, or row by row if some row cannot
        be bound, so that one image never holds back the others' results."""
        rows = [self._result_row(outcome) for outcome in outcomes]
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

    def _result_row(self, o: ImageOutcome) -> tuple[Any, ...]:
        node = None if o.node_id is None else self._node_numbers[o.node_id]
        # Error texts quote origins and URLs: the last line of defence against unstorable text.
        error = None if o.error is None else safe_text(o.error)
        return (o.job_id, o.index, o.width, o.height, error, o.processed_at, node)

    def unsettled_stores(self, job_id: int) -> list[str]:
        return [
            store_id
            for store_id, _first in self._db.execute(
                f"SELECT v.store_id, MIN(i.idx) FROM {IMAGES_WITH_VISITS}"
                " LEFT JOIN results r ON r.job_id = i.job_id AND r.idx = i.idx"
                " WHERE i.job_id = ? AND r.idx IS NULL"
                " GROUP BY v.store_id ORDER BY MIN(i.idx)",
                (job_id,),
            )
        ]

    def mark_cancelled(self, job_id: int, when: float, errors_json: str) -> None:
        self._db.execute(
            "UPDATE jobs SET cancelled_at = ?, errors = ?"
            " WHERE id = ? AND status = ? AND cancelled_at IS NULL",
            (when, errors_json, job_id, JobStatus.ONGOING.value),
        )

    def cancel_of(self, job_id: int) -> tuple[float | None, str | None] | None:
        row = self._db.execute(
            "SELECT cancelled_at, errors FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def first_failures(self, job_id: int) -> list[tuple[str, str]]:
        return [
            (store_id, error)
            for store_id, error, _first in self._db.execute(
                # SQLite gives the bare columns of the row holding MIN(): the first failure.
                f"SELECT v.store_id, r.error, MIN(i.idx) FROM {IMAGES_WITH_VISITS}"
                " JOIN results r ON r.job_id = i.job_id AND r.idx = i.idx"
                " WHERE i.job_id = ? AND r.error IS NOT NULL"
                " GROUP BY v.store_id ORDER BY MIN(i.idx)",
                (job_id,),
            )
        ]

    def close_job(self, job_id: int, status: JobStatus, when: float, errors_json: str) -> None:
        self._db.execute(
            "UPDATE jobs SET status = ?, finished_at = ?, errors = ? WHERE id = ? AND status = ?",
            (status.value, when, errors_json, job_id, JobStatus.ONGOING.value),
        )


def job_for_key(
    db: sqlite3.Connection, idempotency_key: str | None, request_hash: str | None
) -> int | None:
    """As `JobStore.job_for_key`, on `db`."""
    if idempotency_key is None:
        return None
    query = "SELECT id, request_hash FROM jobs WHERE submission_key = ?"
    return job_of_key(db.execute(query, (idempotency_key,)).fetchone(), request_hash)
