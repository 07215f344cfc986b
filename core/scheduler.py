"""Fair ordering of pending images across jobs: one image per job in turn, so a small job
submitted beside a huge one waits for one round, not for the huge one to finish."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable


class FairQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        # Insertion order is the turn order; a job that takes a turn moves to the back.
        self._pending: OrderedDict[int, deque[int]] = OrderedDict()
        self._size = 0
        self._clock = clock
        # Since when each job has had images waiting: its oldest image has waited since then
        # (a job's images come in at once; one put back after a lost worker came later).
        self._since: dict[int, float] = {}

    def __len__(self) -> int:
        return self._size

    def oldest_since(self) -> float | None:
        """The clock's time since which the longest-waiting image has waited; None if none."""
        return min(self._since.values(), default=None)

    def add(self, job_id: int, indexes: Iterable[int]) -> None:
        queue = self._pending.setdefault(job_id, deque())
        before = len(queue)
        queue.extend(indexes)
        self._size += len(queue) - before
        if not queue:
            del self._pending[job_id]
        else:
            self._since.setdefault(job_id, self._clock())

    def requeue(self, job_id: int, index: int) -> None:
        """Put an image back at the head of its job's line (its worker was lost)."""
        queue = self._pending.get(job_id)
        if queue is None:
            queue = self._pending[job_id] = deque()
            self._pending.move_to_end(job_id, last=False)
            self._since[job_id] = self._clock()
        queue.appendleft(index)
        self._size += 1

    def take(self) -> tuple[int, int] | None:
        if not self._pending:
            return None
        job_id, queue = next(iter(self._pending.items()))
        index = queue.popleft()
        self._size -= 1
        if queue:
            self._pending.move_to_end(job_id)
        else:
            del self._pending[job_id]
            del self._since[job_id]
        return job_id, index

    def drop_job(self, job_id: int) -> int:
        """Forget a job's pending images; returns how many there were."""
        queue = self._pending.pop(job_id, None)
        self._since.pop(job_id, None)
        dropped = len(queue) if queue else 0
        self._size -= dropped
        return dropped
