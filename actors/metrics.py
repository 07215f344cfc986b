"""The service's metrics, through Ray's metrics system: each node's metrics agent serves them
to Prometheus (`ray start --metrics-export-port`) and the Ray dashboard charts them. Ray
prefixes every name with `ray_`."""

from __future__ import annotations

import time

from ray.util.metrics import Counter, Gauge, Histogram

from core.images.processing import ImageFetcher, Slots
from core.models import FailureReason, ImageOutcome

LATENCY_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
# Pillow's work on one image: ~0.1 ms for a small PNG's header, up to seconds for the largest.
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

    async def fetch(self, url: str) -> bytes:
        start = time.perf_counter()
        try:
            body = await self._inner.fetch(url)
        finally:
            self._histogram.observe(time.perf_counter() - start)
        if body:
            self._downloaded.inc(len(body))
        return body


class TrackerMetrics:
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
