"""A lock the processes of one host share: held by one task at a time among all of them, and let
go by the kernel when its holder dies, even by SIGKILL. No Ray here."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

# How often a waiting process tries the lock again. Its holder decodes an image larger than a
# worker's share of the node's budget (millions of pixels: tens of ms at least), so the poll
# adds little to the wait, and each try is one system call that does not block.
POLL_SECONDS = 0.01


def node_lock_path(purpose: str, node_id: str) -> Path:
    """The file every process of one Ray node opens for the lock `purpose`. Two nodes on one
    host (the test clusters) have locks of their own, as they have budgets of their own."""
    return Path(tempfile.gettempdir()) / f"image-service-{purpose}-{node_id}.lock"


class HostLock:
    """An exclusive `flock` on a file. Each instance opens the file itself, so two instances
    exclude each other as two processes do. flock has no asynchronous wait: in a process, one
    task at a time polls the file and the others queue behind it, first come, first served."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._turn = asyncio.Lock()
        self._fd: int | None = None

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        async with self._turn:
            fd = self._open()
            while not _try_lock(fd):
                await asyncio.sleep(POLL_SECONDS)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self) -> int:
        # Opened once and kept for the life of the process: the lock belongs to this open.
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
