"""The service's metrics, through Ray's metrics system: each node's metrics agent serves them
to Prometheus (`ray start --metrics-export-port`) and the Ray dashboard charts them. Ray
prefixes every name with `ray_`."""

from __future__ import annotations

import time

from ray.util.metrics import Counter, Gauge, Histogram

from core.images.nodememory import ImageMemory
from core.images.processing import ImageFetcher, Slots
from core.models import FailureReason, ImageOutcome, JobState

LATENCY_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
# Pillow's work on one image: ~0.1 ms for a small PNG's header, up to seconds for the largest.
# A job's life, submit to final state: seconds for a few images, an hour and more for a large
# job behind others.
JOB_BOUNDARIES = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
                  7200.0, 14400.0, 43200.0, 86400.0]  # fmt: skip
# One flush: milliseconds on SQLite, a round trip or more on PostgreSQL, the store's deadline
# (IMAGE_SERVICE_DATABASE_TIMEOUT, 5 s by default) at worst.
FLUSH_BOUNDARIES = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
DECODE_BOUNDARIES = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]


class ImageMetrics:
    """Recorded by the image workers, and by the tracker for images it settles itself
    (unknown stores, cancellations)."""

    def __init__(self) -> None:
        self.processed = Counter(
            "image_service_images_processed",
            description="Images measured successfully.",
        )
        self.failed = Counter(
            "image_service_images_failed",
            description="Images that failed, by reason.",
            tag_keys=("reason",),
        )
        self.download_seconds = Histogram(
            "image_service_download_seconds",
            description="Time to download one image, retries included.",
            boundaries=LATENCY_BOUNDARIES,
        )
        self.processing_seconds = Histogram(
            "image_service_processing_seconds",
            description="Time to settle one image: download, measure, simulated GPU work.",
            boundaries=LATENCY_BOUNDARIES,
        )

    def settled(self, outcome: ImageOutcome) -> None:
        if outcome.error is None:
            self.processed.inc()
        else:
            reason = outcome.reason or FailureReason.INTERNAL
            self.failed.inc(tags={"reason": reason.value})

    def failed_at_once(self, reason: FailureReason, count: int) -> None:
        if count:
            self.failed.inc(count, tags={"reason": reason.value})


class WorkerMetrics:
    """Recorded by the image workers only.

    Slots: each worker reports its own share of its node's `image_slots` (`WorkerShare`,
    the shares of a node add up to its capacity), so `sum(ray_image_service_slots_busy) /
    sum(ray_image_service_slots_total)` is the cluster's utilisation, per node with `by
    (NodeAddress)`."""

    def __init__(self) -> None:
        self.downloaded_bytes = Counter(
            "image_service_downloaded_bytes",
            description="Bytes of image bodies downloaded.",
        )
        self.decode_seconds = Histogram(
            "image_service_decode_seconds",
            description="Time Pillow took over one image: identify, decode, check.",
            boundaries=DECODE_BOUNDARIES,
        )
        self.slots_busy = Gauge(
            "image_service_slots_busy",
            description="Simulated GPU slots in use: this worker's share of its node's.",
        )
        self.slots_total = Gauge(
            "image_service_slots_total",
            description="Simulated GPU slots: this worker's share of its node's.",
        )

    def slots(self, slots: Slots) -> None:
        self.slots_busy.set(slots.busy)
        self.slots_total.set(slots.total)


class TimedFetcher:
    """A downloader that records each download's time in the latency histogram, and the
    bytes of each body it got whole (a download that fails counts none)."""

    def __init__(self, inner: ImageFetcher, histogram: Histogram, downloaded: Counter) -> None:
        self._inner = inner
        self._histogram = histogram
        self._downloaded = downloaded

    async def fetch(self, url: str, memory: ImageMemory | None = None) -> bytes:
        start = time.perf_counter()
        try:
            body = await self._inner.fetch(url, memory)
        finally:
            self._histogram.observe(time.perf_counter() - start)
        if body:
            self._downloaded.inc(len(body))
        return body


class TrackerMetrics:
    """Recorded by the tracker. Its parts are told through the methods (and fakes of them
    in the tests); the gauges of what it holds are set by its metrics loop."""

    def __init__(self) -> None:
        self.jobs = Gauge(
            "image_service_jobs",
            description="Jobs by state (ongoing, cancelling, completed, failed, cancelled).",
            tag_keys=("state",),
        )
        self.in_flight = Gauge(
            "image_service_images_in_flight",
            description="Images handed to workers and not yet settled.",
        )
        self.queue_depth = Gauge(
            "image_service_queue_depth",
            description="Images waiting for a free worker slot.",
        )
        self.oldest_queued_seconds = Gauge(
            "image_service_oldest_queued_seconds",
            description="Age of the oldest image waiting for a worker slot; 0 when none waits.",
        )
        self.flush_backlog = Gauge(
            "image_service_flush_backlog",
            description="Settled images waiting to be written to the job store.",
        )
        self.dispatch_lease = Gauge(
            "image_service_dispatch_lease",
            description="1 while this cluster's tracker holds the dispatch lease and may "
            "dispatch under it, else 0.",
        )
        self.job_duration_seconds = Histogram(
            "image_service_job_duration_seconds",
            description="Time from a job's submission to its final state, by that state.",
            boundaries=JOB_BOUNDARIES,
            tag_keys=("state",),
        )
        self.flush_seconds = Histogram(
            "image_service_flush_seconds",
            description="Time of one flush of settled results to the job store.",
            boundaries=FLUSH_BOUNDARIES,
        )
        self.store_errors = Counter(
            "image_service_store_errors",
            description="Job store calls that failed, by kind (timeout, unavailable, other).",
            tag_keys=("kind",),
        )
        self.callbacks = Counter(
            "image_service_callbacks",
            description="Completion callbacks, by outcome (delivered, failed).",
            tag_keys=("outcome",),
        )

    def job_ended(self, state: JobState, seconds: float) -> None:
        self.job_duration_seconds.observe(seconds, tags={"state": state.value})

    def flushed(self, seconds: float) -> None:
        self.flush_seconds.observe(seconds)

    def store_failed(self, kind: str) -> None:
        self.store_errors.inc(tags={"kind": kind})

    def callback_sent(self, delivered: bool) -> None:
        self.callbacks.inc(tags={"outcome": "delivered" if delivered else "failed"})
