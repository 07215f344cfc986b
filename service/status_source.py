"""Status read straight from the job store, without a round trip through the tracker: what
the edge (service/edge.py) and the API replica both do, since it is what bounds status
throughput."""

from __future__ import annotations

import asyncio

from core.jobstore import open_status_reader
from core.models import JobView
from core.settings import Settings


class StatusSource:
    """The statuses of the job store the settings name, read on the event loop when the store
    is a file on this node (microseconds), else in a thread (a round trip). With PostgreSQL no
    SQLite file is read: one left from a SQLite run would be stale."""

    def __init__(self, settings: Settings) -> None:
        self._reader = open_status_reader(settings)

    @property
    def local(self) -> bool:
        """Whether only a process on the tracker's node can read the store (SQLite's file)."""
        return self._reader.local

    async def job_view(
        self, job_id: int, client_id: str | None = None, exact: bool = False
    ) -> JobView | None:
        """As `StatusReader.job_view`."""
        if self._reader.local:
            return self._reader.job_view(job_id, client_id, exact)
        return await asyncio.to_thread(self._reader.job_view, job_id, client_id, exact)
