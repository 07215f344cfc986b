"""What an image worker has settled and not yet handed to the tracker: sent in batches, and a
batch the tracker did not take is kept and sent again, ahead of newer outcomes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from core.models import ImageOutcome

# Outcomes that go at once, without waiting for the report interval.
REPORT_BATCH = 128

Send = Callable[[list[ImageOutcome]], Awaitable[None]]


class Outbox:
    """Create and use it inside one event loop; `report_step` is meant to run under
    `core.supervise.supervise`, which logs a failed send and calls it again."""

    def __init__(self, send: Send, interval: float, batch: int = REPORT_BATCH) -> None:
        self._send = send
        self._interval = interval
        self._batch = batch
        self._waiting: list[ImageOutcome] = []
        self._full = asyncio.Event()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, outcome: ImageOutcome, *, now: bool = False) -> None:
        """Keep `outcome` for the next report; `now`: send without waiting for the interval
        (the worker holds nothing else, so no batch will grow: the job may be waiting on it)."""
        self._waiting.append(outcome)
        if now or len(self._waiting) >= self._batch:
            self._full.set()

    async def report_step(self) -> None:
        """Wait for a full batch or the interval, then send what waits. A send that fails
        raises, and its outcomes wait again, first in line."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), self._interval)
        self._full.clear()
        if not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        try:
            await self._send(batch)
        except BaseException:
            self._waiting[:0] = batch  # sent again with the next report, never dropped
            raise
