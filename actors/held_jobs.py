"""The jobs one tracker holds: their live state (a `JobBook`), started over empty whenever the
dispatch lease changes hands, and the event that wakes dispatching."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from core.jobs import ActiveJob, JobBook, JobLimits
from core.models import FailureReason

if TYPE_CHECKING:  # the metrics are Ray's: this module stays free of Ray
    from actors.metrics import ImageMetrics


class HeldJobs:
    """Every part reads `book` afresh at each use: a step-down or a takeover replaces it whole,
    and a part that kept the old one would act on jobs no longer held."""

    def __init__(self, limits: JobLimits, image_metrics: ImageMetrics) -> None:
        self._limits = limits
        self._image_metrics = image_metrics
        self.book = JobBook(limits)
        # Set when dispatching may find work: jobs, outcomes, capacity or the lease changed.
        self.wake = asyncio.Event()

    def forget_all(self) -> JobBook:
        """Hold no job from now on; returns the new, empty book."""
        self.book = JobBook(self._limits)
        return self.book

    def activate(self, job: ActiveJob) -> None:
        """Take on a job (new or loaded from the store) and wake dispatching."""
        cancelled = self.book.activate(job)
        self._image_metrics.failed_at_once(FailureReason.CANCELLED, cancelled)
        self.wake.set()
