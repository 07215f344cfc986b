"""Job statuses read from PostgreSQL by the edge and the API replicas, on any node.

There is one such process per node and per replica: each holds a pool of at most
`READER_POOL_SIZE` read-only connections, not the store's larger one, and runs no migration
(the tracker's store does; a reader before it finds no tables and says so).
"""

from __future__ import annotations

import threading
from typing import ClassVar

import psycopg

from core.errors import DatabaseUnavailable
from core.jobstore.base import DatabaseCalls, database_errors
from core.jobstore.deadline import DEFAULT_TIMEOUT_SECONDS, PROBE_INTERVAL_SECONDS, StoreDeadlines
from core.jobstore.postgres.connection import PostgresConnections
from core.jobstore.rows import JOB_VIEW_COLUMNS, view_from_row
from core.models import JobView

# A status read is one primary-key lookup, well under a millisecond on the server: two
# connections answer thousands a second, and a process waits for one rather than open more.
READER_POOL_SIZE = 2


class PostgresStatusReader(DatabaseCalls):
    """The statuses in the database at `url`; its pool opened by the first read (in the
    caller's thread: a read is a round trip, so never on an event loop, `local` False)."""

    database_error: ClassVar[type[Exception]] = psycopg.Error
    local = False

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._url = url
        self._timeout = timeout
        self._connections: PostgresConnections | None = None
        # Concurrent first reads each run in a thread of their own: one opens the pool. A
        # database that cannot be reached then is not tried again by every read in turn.
        self._opening = threading.Lock()
        self._opened = StoreDeadlines(timeout, PROBE_INTERVAL_SECONDS)

    @database_errors("read a job's status")
    def job_view(
        self, job_id: int, client_id: str | None = None, exact: bool = False
    ) -> JobView | None:
        """As `StatusReader.job_view`."""
        with self._open().connection() as db:
            row = db.execute(
                f"SELECT {JOB_VIEW_COLUMNS} FROM jobs WHERE id = %s", (job_id,)
            ).fetchone()
        return view_from_row(job_id, row, client_id, exact)

    def _open(self) -> PostgresConnections:
        with self._opening:
            if self._connections is None:
                self._opened.admit()
                try:
                    self._connections = PostgresConnections(
                        self._url,
                        self._timeout,
                        READER_POOL_SIZE,
                        PROBE_INTERVAL_SECONDS,
                        read_only=True,
                    )
                except DatabaseUnavailable:
                    self._opened.down()
                    raise
            return self._connections

    def close(self) -> None:
        with self._opening:
            if self._connections is not None:
                self._connections.close()
