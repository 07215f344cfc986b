"""Status read straight from the job store, without a round trip through the tracker: what
the edge (service/edge.py) and the API replica both do, since it is what bounds status
throughput."""

from __future__ import annotations

import asyncio
import threading

from core.errors import DatabaseUnavailable
from core.jobstore.deadline import StoreDeadlines
from core.jobstore.postgres.store import PostgresStore
from core.jobstore.sqlite.reader import SqliteStatusReader
from core.models import JobView
from core.settings import Settings


class StatusSource:
    """The job store the settings name, opened on first use: the SQLite file (read inline, a
    read takes microseconds) or PostgreSQL (a round trip: read in a thread, off the event
    loop). With PostgreSQL no SQLite file is read: one left from a SQLite run would be stale."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sqlite: SqliteStatusReader | None = None
        self._postgres: PostgresStore | None = None
        # Concurrent first reads each run in a thread of their own: one opens the pool. A
        # database that cannot be reached then is not tried again by every read in turn.
        self._opening = threading.Lock()
        self._opened = StoreDeadlines(settings.database_timeout)

    async def job_view(
        self, job_id: int, client_id: str | None = None, exact: bool = False
    ) -> JobView | None:
        """As `SqliteStatusReader.job_view`; StorageError when the store cannot be read
        (SQLite: not on this node, or not created yet), DatabaseUnavailable when it does not
        answer within `database_timeout`."""
        if self._settings.database_url:
            return await asyncio.to_thread(self._postgres_view, job_id, client_id, exact)
        if self._sqlite is None:
            self._sqlite = SqliteStatusReader(
                self._settings.database_path, self._settings.database_timeout
            )
        return self._sqlite.job_view(job_id, client_id, exact)

    def _postgres_view(self, job_id: int, client_id: str | None, exact: bool) -> JobView | None:
        return self._postgres_store().job_view(job_id, client_id, exact)

    def _postgres_store(self) -> PostgresStore:
        with self._opening:
            if self._postgres is None:
                self._opened.admit()
                try:
                    self._postgres = PostgresStore(
                        self._settings.database_url, self._settings.database_timeout
                    )
                except DatabaseUnavailable:
                    self._opened.down()
                    raise
            return self._postgres
