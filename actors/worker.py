"""An image worker: an async actor holding its share of a node's images, downloading and
measuring ahead of the simulated GPU step (see `core.images.processing.Stages`), and reporting
outcomes back to the JobTracker in batches (`core.outbox`). A node runs a few of them, one per
CPU by default.

Measured here, one async actor holding many concurrent images beats a Ray task per image by an
order of magnitude (a sleeping task pins a whole worker process), and batching both ways keeps
Ray's per-call cost off the per-image path: the tracker sends lists of images, the worker
answers with lists of outcomes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

import ray
from ray.actor import ActorHandle

from actors.metrics import ImageMetrics, TimedFetcher, WorkerMetrics
from core.images.fetch import Downloader, FetchLimits
from core.images.hostlock import HostLock, node_lock_path
from core.images.malloc import return_large_blocks
from core.images.nodememory import NodeMemory, node_budget
from core.images.processing import (
    Budget,
    DecodeBudget,
    Slots,
    Stages,
    failed_outcome,
    process_image,
)
from core.images.urlguard import AddressPolicy
from core.logs import use_json_logs
from core.models import FailureReason, ImageOutcome, ImageTask
from core.outbox import Outbox
from core.settings import Settings
from core.supervise import supervise

# After a report the tracker did not take (it is restarting, say), the wait before the next try.
REPORT_RETRY_SECONDS = 0.5
# How often the slot gauges are set: slots change with every image, and a gauge is read only
# when Ray exports it (every 10 s), so a look a second keeps it fresh for two gauge sets.
SLOTS_REFRESH_SECONDS = 1.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerShare:
    """A worker's part of its node's bounds (`actors.pool.WorkerPool.worker_shares`)."""

    gpu_slots: int  # simulated GPU work at once: its part of the node's `image_slots`
    fetches: int  # downloads and measurements at once: its part of FETCH_CONCURRENCY
    decode_pixels: int  # pixels decoded at once, besides the node's one larger image


@ray.remote(num_cpus=0, max_restarts=0)
class ImageWorker:
    def __init__(
        self, settings: Settings, share: WorkerShare, key: str, tracker: ActorHandle
    ) -> None:
        use_json_logs()
        return_large_blocks()
        self._settings = settings
        self._key = key
        self._tracker = tracker
        self._node_id = ray.get_runtime_context().get_node_id()
        policy = AddressPolicy.from_entries(settings.allow_private_urls, settings.allowed_hosts)
        self._metrics = ImageMetrics()
        self._worker_metrics = WorkerMetrics()
        self._downloader = TimedFetcher(
            Downloader(FetchLimits.from_settings(settings), policy, pool_size=share.fetches),
            self._metrics.download_seconds,
            self._worker_metrics.downloaded_bytes,
        )
        self._gpu = Slots(share.gpu_slots)
        self._stages = Stages(
            fetching=asyncio.Semaphore(share.fetches),
            gpu=self._gpu,
            pixels=DecodeBudget(
                Budget(share.decode_pixels), HostLock(node_lock_path("decode", self._node_id))
            ),
            # One budget for the whole node, whatever its workers: not split as the rest is.
            memory=NodeMemory(
                node_lock_path("memory", self._node_id),
                node_budget(settings.node_memory_budget),
            ),
        )
        self._outbox = Outbox(self._report, settings.report_interval)
        self._running: set[asyncio.Task[None]] = set()
        self._reporter = supervise("report", self._outbox.report_step, REPORT_RETRY_SECONDS)
        self._slot_gauges = supervise("slots", self._slots_step)

    async def accept(self, tasks: list[ImageTask]) -> None:
        """Start the images; their outcomes come back through `JobTracker.report`."""
        for task in tasks:
            running = asyncio.create_task(self._settle(task))
            self._running.add(running)
            running.add_done_callback(self._running.discard)

    async def lifeline(self) -> None:
        """Never answers while the worker lives: the tracker awaits it to learn of its death."""
        await asyncio.Event().wait()

    async def ready(self) -> None:
        """Answers once the worker is up: the tracker sends work only then."""

    async def pid(self) -> int:
        """The worker's process id, for operators and the fault tests."""
        return os.getpid()

    async def _settle(self, task: ImageTask) -> None:
        start = time.perf_counter()
        try:
            outcome = await process_image(
                task,
                self._downloader,
                max_pixels=self._settings.max_image_pixels,
                gpu_delay=self._settings.gpu_delay,
                node_id=self._node_id,
                stages=self._stages,
                decode_seconds=self._worker_metrics.decode_seconds.observe,
            )
        except Exception:
            # A bug, not a property of the image: log it loudly, and still settle the image so
            # that its job cannot hang on it.
            log.exception("processing image %d failed", task.index, extra={"job_id": task.job_id})
            outcome = failed_outcome(
                task,
                FailureReason.INTERNAL,
                "internal error while processing the image",
                self._node_id,
            )
        self._metrics.processing_seconds.observe(time.perf_counter() - start)
        self._metrics.settled(outcome)
        # This image's own task is still among those running until it returns.
        self._outbox.add(outcome, now=len(self._running) <= 1)

    async def _slots_step(self) -> None:
        self._worker_metrics.slots(self._gpu)
        await asyncio.sleep(SLOTS_REFRESH_SECONDS)

    async def _report(self, outcomes: list[ImageOutcome]) -> None:
        await self._tracker.report.remote(self._key, outcomes)
