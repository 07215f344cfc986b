"""Background loops that outlive their own failures: one raising iteration is logged with its
traceback and the loop goes on, as Ray Serve's controller loop does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from core.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

# Pause after a failed iteration of a background loop, or a failed recovery, before the next.
RETRY_PAUSE_SECONDS = 1.0

# The event loop keeps only weak references to tasks: these keep the loops alive.
_loops: set[asyncio.Task[None]] = set()


async def run_forever(name: str, step: Callable[[], Awaitable[None]], pause: float) -> None:
    """Await `step()` again and again; after one that raises, log it and wait `pause` seconds."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except DatabaseUnavailable as exc:
            # Expected while the database is down, and said once by the store: no traceback.
            log.warning("%s: %s", name, exc)
            await asyncio.sleep(pause)
        except Exception:
            log.exception("%s: an iteration failed; the loop goes on", name)
            await asyncio.sleep(pause)


def supervise(
    name: str, step: Callable[[], Awaitable[None]], pause: float = RETRY_PAUSE_SECONDS
) -> asyncio.Task[None]:
    """Run `step` forever in a task of the running loop; if that task ever ends other than by
    being cancelled (a BaseException got through), log it and start it again."""
    task = asyncio.get_running_loop().create_task(run_forever(name, step, pause), name=name)
    _loops.add(task)

    def restart(ended: asyncio.Task[None]) -> None:
        _loops.discard(ended)
        if ended.cancelled():
            return
        log.error("%s: the loop ended (%r); starting it again", name, ended.exception())
        supervise(name, step, pause)

    task.add_done_callback(restart)
    return task
