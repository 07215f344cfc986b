"""The work done for one image: download, measure, simulated GPU delay. No Ray here."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from typing import Protocol

from core.fetch import ImageDownloadError, redact_url
from core.measure import BrokenImageError, NotAnImageError, declared_pixels, measure_image
from core.models import FailureReason, ImageOutcome, ImageTask
from core.text import safe_text

# Below this size decoding costs less than handing the work to a thread and back.
INLINE_DECODE_BYTES = 64 * 1024
# A small file may still declare a large image; one that decodes this many pixels or more
# goes to a thread, under the node's pixel budget.
INLINE_DECODE_PIXELS = 1_000_000


class PixelBudget:
    """How many pixels may be decoding at once in this process: the bound on decode memory,
    whatever the number of images in flight. An image larger than the whole budget waits
    until it can have all of it."""

    def __init__(self, pixels: int) -> None:
        self._capacity = pixels
        self._free = pixels
        self._changed = asyncio.Condition()

    @property
    def in_use(self) -> int:
        return self._capacity - self._free

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        pixels = min(pixels, self._capacity)
        async with self._changed:
            await self._changed.wait_for(lambda: self._free >= pixels)
            self._free -= pixels
        try:
            yield
        finally:
            async with self._changed:
                self._free += pixels
                self._changed.notify_all()


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
    budget: PixelBudget | None = None,
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
        width, height = await _measure(data, max_pixels, budget)
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


async def _measure(data: bytes, max_pixels: int, budget: PixelBudget | None) -> tuple[int, int]:
    pixels = declared_pixels(data)
    if len(data) <= INLINE_DECODE_BYTES and pixels < INLINE_DECODE_PIXELS:
        return measure_image(data, max_pixels)
    # Decoding a large image takes milliseconds: keep the event loop free meanwhile.
    if budget is None:
        return await asyncio.to_thread(measure_image, data, max_pixels)
    async with budget.hold(min(pixels, max_pixels)):
        return await asyncio.to_thread(measure_image, data, max_pixels)


def failed_outcome(
    task: ImageTask, reason: FailureReason, message: str, node_id: str | None
) -> ImageOutcome:
    return ImageOutcome(
        job_id=task.job_id,
        index=task.index,
        processed_at=time.time(),
        # The message quotes an origin's words and the URL: make it storable whatever they hold.
        error=safe_text(message),
        node_id=node_id,
        reason=reason,
    )
