"""The work done for one image: download, measure, simulated GPU delay. No Ray here."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Protocol

from core.fetch import ImageDownloadError, redact_url
from core.measure import BrokenImageError, NotAnImageError, measure_image
from core.models import FailureReason, ImageOutcome, ImageTask

# Below this size decoding costs less than handing the work to a thread and back.
INLINE_DECODE_BYTES = 64 * 1024


class ImageFetcher(Protocol):
    """Downloads one image's bytes or raises `ImageDownloadError` (`core.fetch.Downloader`)."""

    async def fetch(self, url: str) -> bytes: ...


async def process_image(
    task: ImageTask,
    downloader: ImageFetcher,
    *,
    max_pixels: int,
    gpu_delay: tuple[float, float],
    node_id: str | None = None,
) -> ImageOutcome:
    """Settle one image. Every failure the image itself can cause becomes an outcome with a
    reason; anything else is a bug and propagates."""
    shown_url = redact_url(task.url)
    try:
        data = await downloader.fetch(task.url)
    except ImageDownloadError as exc:
        return failed_outcome(
            task, FailureReason.DOWNLOAD, f"image download failed: {shown_url}: {exc}", node_id
        )
    try:
        if len(data) <= INLINE_DECODE_BYTES:
            width, height = measure_image(data, max_pixels)
        else:
            # Decoding a large image takes milliseconds: keep the event loop free meanwhile.
            width, height = await asyncio.to_thread(measure_image, data, max_pixels)
    except NotAnImageError as exc:
        return failed_outcome(
            task, FailureReason.NOT_AN_IMAGE, f"not an image: {shown_url}: {exc}", node_id
        )
    except BrokenImageError as exc:
        return failed_outcome(
            task, FailureReason.DECODE, f"image decode failed: {shown_url}: {exc}", node_id
        )
    low, high = gpu_delay
    if high > 0:
        await asyncio.sleep(random.uniform(low, high))
    return ImageOutcome(
        job_id=task.job_id,
        index=task.index,
        processed_at=time.time(),
        width=width,
        height=height,
        node_id=node_id,
    )


def failed_outcome(
    task: ImageTask, reason: FailureReason, message: str, node_id: str | None
) -> ImageOutcome:
    return ImageOutcome(
        job_id=task.job_id,
        index=task.index,
        processed_at=time.time(),
        error=message,
        node_id=node_id,
        reason=reason,
    )
