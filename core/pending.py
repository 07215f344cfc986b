"""What the tracker has decided but not yet written: taken whole by a flush, and put back in
front of what came meanwhile if the write fails, so nothing is lost or reordered."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from core.jobstore.records import CancelMark
from core.models import ImageOutcome


@dataclass
class PendingWrites:
    outcomes: list[ImageOutcome] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)  # jobs whose every image has settled
    started: list[tuple[int, float]] = field(default_factory=list)  # (job id, when)
    cancels: list[CancelMark] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.finished or self.started or self.cancels)

    def cancel(self, job_id: int, when: float) -> None:
        """A cancel, after every outcome recorded so far and before every later one."""
        self.cancels.append(CancelMark(job_id, when, position=len(self.outcomes)))

    def take(self) -> PendingWrites:
        """Everything pending, leaving this empty."""
        taken = PendingWrites(self.outcomes, self.finished, self.started, self.cancels)
        self.outcomes, self.finished, self.started, self.cancels = [], [], [], []
        return taken

    def restore(self, taken: PendingWrites) -> None:
        """Put back what `take` returned, ahead of what was recorded since."""
        shift = len(taken.outcomes)
        self.cancels = taken.cancels + [
            replace(mark, position=mark.position + shift) for mark in self.cancels
        ]
        self.outcomes = taken.outcomes + self.outcomes
        self.finished = taken.finished + self.finished
        self.started = taken.started + self.started
