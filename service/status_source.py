"""Status read straight from the job store, without a round trip through the tracker: what
the edge (service/edge.py) and the API replica both do, since it is what bounds status
throughput."""

from __future__ import annotations

import asyncio

from core.models import JobView
from core.pg_store import PostgresStore
from core.settings import Settings
from core.storage import StatusReader


class StatusSource:
    """The job store the settings name, opened on first use: the SQLite file (read inline, a
    read takes microseconds) or PostgreSQL (a round trip: read in a thread, off the event
    loop). With PostgreSQL no SQLite file is read: one left from a SQLite run would be stale."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sqlite: StatusReader | None = None
        self._postgres: PostgresStore | None = None

    async def job_view(
        self, job_id: int, client_id: str | None = None, exact: bool = False
    ) -> JobView | None:
        """As `StatusReader.job_view`; StorageError when the store cannot be read (SQLite: not
        on this node, or not created yet)."""
        if self._settings.database_url:
            return await asyncio.to_thread(self._postgres_view, job_id, client_id, exact)
        if self._sqlite is None:
            self._sqlite = StatusReader(self._settings.database_path)
        return self._sqlite.job_view(job_id, client_id, exact)

    def _postgres_view(self, job_id: int, client_id: str | None, exact: bool) -> JobView | None:
        if self._postgres is None:
            self._postgres = PostgresStore(self._settings.database_url)
        return self._postgres.job_view(job_id, client_id, exact)
