"""One thread for every call into the job store: writes stay in order, and the event loop
that awaits them never blocks on the disk."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

from core.errors import (
    DatabaseTimedOut,
    DatabaseUnavailable,
    StorageError,
    SubmissionOutcomeUnknown,
)

P = ParamSpec("P")
R = TypeVar("R")

# What a failed store call is counted as (the tracker's `image_service_store_errors{kind}`).
STORE_ERROR_KINDS = ("timeout", "unavailable", "other")


def store_error_kind(exc: StorageError) -> str:
    """`timeout`: cut off at its deadline; `unavailable`: the database refused, or was known to
    be down and the call was not tried (a commit whose outcome is unknown began as either);
    `other`: any other database error (disk full, I/O error, locked)."""
    if isinstance(exc, DatabaseTimedOut):
        return "timeout"
    if isinstance(exc, DatabaseUnavailable | SubmissionOutcomeUnknown):
        return "unavailable"
    return "other"


class DatabaseThread:
    """`failed` is told of every call that raised a StorageError, by kind; the store's other
    exceptions are answers (an idempotency conflict), not failures."""

    def __init__(self, name: str = "jobstore", failed: Callable[[str], None] | None = None) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._failed = failed

    async def run(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, partial(function, *args, **kwargs))
        except StorageError as exc:
            if self._failed is not None:
                self._failed(store_error_kind(exc))
            raise
