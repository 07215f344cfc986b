"""Job statuses read from the SQLite file beside the tracker, by the edge and the API replicas
on its node: a read-only connection, opened on the first read that finds the file."""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path
from typing import ClassVar

from core.errors import StorageError
from core.jobstore.base import DatabaseCalls, database_errors
from core.jobstore.deadline import DEFAULT_TIMEOUT_SECONDS, StoreDeadlines
from core.jobstore.rows import JOB_VIEW_COLUMNS, view_from_row
from core.jobstore.sqlite.calls import SqliteCalls
from core.models import JobView


def read_job_view(
    db: sqlite3.Connection, job_id: int, client_id: str | None = None, exact: bool = False
) -> JobView | None:
    """As `rows.view_from_row`, read from `db`."""
    row = db.execute(f"SELECT {JOB_VIEW_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return view_from_row(job_id, row, client_id, exact)


class SqliteStatusReader(DatabaseCalls):
    """A read-only view of job statuses for processes beside the tracker's database.

    A job's row says `ongoing` from the commit that answers its submission until the commit
    that closes it, and only then its final status: reading it can never go backwards.
    WAL readers do not wait for the writer, and the lookup is by primary key: microseconds,
    so it is read on the caller's event loop (`local`).
    """

    database_error: ClassVar[type[Exception]] = sqlite3.Error
    local = True

    def __init__(self, path: Path, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._path = path
        self._timeout = timeout
        self._calls: SqliteCalls | None = None

    @database_errors("read a job's status")
    def job_view(
        self, job_id: int, client_id: str | None = None, exact: bool = False
    ) -> JobView | None:
        """As `StatusReader.job_view`; StorageError while there is no file to read here."""
        return read_job_view(self._opened().db, job_id, client_id, exact)

    def _guarded(self, extra_seconds: float) -> AbstractContextManager[None]:
        return self._opened().guarded(extra_seconds)

    def _opened(self) -> SqliteCalls:
        # Tried again by every read until it succeeds: the tracker creates the file later than
        # this process may start, and a node without it answers nothing from it.
        if self._calls is None:
            try:
                db = sqlite3.connect(
                    f"file:{self._path}?mode=ro", uri=True, check_same_thread=False
                )
            except sqlite3.Error as exc:
                raise StorageError(f"could not open {self._path}: {exc}") from exc
            self._calls = SqliteCalls(db, StoreDeadlines(self._timeout))
        return self._calls

    def close(self) -> None:
        if self._calls is not None:
            self._calls.db.close()
