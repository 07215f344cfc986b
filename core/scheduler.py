"""Fair ordering of pending images across jobs: one image per job in turn, so a small job
submitted beside a huge one waits for one round, not for the huge one to finish."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable


class FairQueue:
    def __init__(self) -> None:
        # Insertion order is the turn order; a job that takes a turn moves to the back.
        self._pending: OrderedDict[int, deque[int]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, job_id: int, indexes: Iterable[int]) -> None:
        queue = self._pending.setdefault(job_id, deque())
        before = len(queue)
        queue.extend(indexes)
        self._size += len(queue) - before
        if not queue:
            del self._pending[job_id]

    def requeue(self, job_id: int, index: int) -> None:
        """Put an image back at the head of its job's line (its worker was lost)."""
        queue = self._pending.get(job_id)
        if queue is None:
            queue = self._pending[job_id] = deque()
            self._pending.move_to_end(job_id, last=False)
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
        return job_id, index

    def drop_job(self, job_id: int) -> int:
        """Forget a job's pending images; returns how many there were."""
        queue = self._pending.pop(job_id, None)
        dropped = len(queue) if queue else 0
        self._size -= dropped
        return dropped
