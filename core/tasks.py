"""One-off background tasks (a batch sent to a worker, a callback sweep): each held until it
ends, since the event loop keeps only weak references, and its failure logged, since nothing
else awaits it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class BackgroundTasks:
    """The one-off tasks a tracker has started and that have not ended yet."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` in a task of the running loop, held until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._running.add(task)
        task.add_done_callback(self._forget)
        return task

    def running(self) -> set[asyncio.Task[None]]:
        """The tasks not ended yet (a copy)."""
        return set(self._running)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a background task failed", exc_info=task.exception())
