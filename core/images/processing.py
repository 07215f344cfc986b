"""The work done for one image: download and measure, then the simulated GPU delay, each step
bounded on its own. No Ray here."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from core.images.fetch import ImageDownloadError, redact_url
from core.images.hostlock import HostLock
from core.images.measure import (
    BrokenImageError,
    NotAnImageError,
    check_image,
    decoded_bytes,
    open_image,
)
from core.images.nodememory import ImageMemory, NodeMemory, image_memory
from core.models import FailureReason, ImageOutcome, ImageTask
from core.text import safe_text

# Below this size decoding costs less than handing the work to a thread and back.
INLINE_DECODE_BYTES = 64 * 1024
# Above this size a file's header is parsed in a thread. Pillow reads every block before the
# image data to learn its size (a GIF's comments, a PNG's text chunks): measured here, a file
# of such blocks opens in about 1.2 ns a byte (49 us for a 40 KiB PNG of tEXt chunks, 41 us
# for a GIF of comments), against 46 us for a thread hop (`asyncio.to_thread`); a 20 MB GIF
# of comment blocks took 72 ms, which on the loop would stop every other image of the worker.
INLINE_OPEN_BYTES = 40 * 1024
# A small file may still declare a large image; one that decodes this many pixels or more
# goes to a thread, under the pixel budget.
INLINE_DECODE_PIXELS = 1_000_000


class Budget:
    """A quantity several holders share (pixels being decoded, say): each holds a part of it
    for a while, and waits while the rest is too small. A part larger than the whole waits
    until it can have all of it."""

    def __init__(self, total: int) -> None:
        self._total = total
        self._free = total
        self._changed = asyncio.Condition()
        # First come, first served: a large part is not passed for ever by smaller ones.
        self._turns: deque[object] = deque()

    @property
    def total(self) -> int:
        return self._total

    @property
    def in_use(self) -> int:
        return self._total - self._free

    @contextlib.asynccontextmanager
    async def hold(self, amount: int) -> AsyncIterator[None]:
        amount = min(amount, self._total)
        turn = object()
        async with self._changed:
            self._turns.append(turn)
            try:
                await self._changed.wait_for(
                    lambda: self._turns[0] is turn and self._free >= amount
                )
            finally:
                self._turns.remove(turn)
                self._changed.notify_all()  # the next in line may fit now
            self._free -= amount
        try:
            yield
        finally:
            async with self._changed:
                self._free += amount
                self._changed.notify_all()


class Slots(asyncio.Semaphore):
    """A semaphore over `total` slots that says how many are held now (`busy`): the simulated
    GPU slots of an image worker, which its metrics report."""

    def __init__(self, total: int) -> None:
        super().__init__(total)
        self.total = total
        self.busy = 0

    async def __aenter__(self) -> None:
        await super().__aenter__()
        self.busy += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.busy -= 1
        await super().__aexit__(exc_type, exc, traceback)


class PixelBudget(Protocol):
    """What bounds the pixels being decoded: a `Budget`, or a worker's `DecodeBudget`."""

    def hold(self, amount: int) -> AbstractAsyncContextManager[None]: ...


@dataclass(frozen=True)
class DecodeBudget:
    """One image worker's part of its node's decode budget: its own share, for the images that
    fit in it, and the node's reserve of `MAX_IMAGE_PIXELS`, which one image larger than a
    share takes at a time, whichever of the node's workers decodes it. The shares and the
    reserve add up to the node's budget (`actors.pool.WorkerPool.worker_shares`), so the
    workers of a node never decode more at once, and each can decode the largest image."""

    share: Budget
    reserve: HostLock  # the node's one lock for it, shared by its worker processes

    def hold(self, amount: int) -> AbstractAsyncContextManager[None]:
        return self.share.hold(amount) if amount <= self.share.total else self.reserve.held()


@dataclass(frozen=True)
class Stages:
    """The two steps of an image, bounded apart, as Ray Data's streaming executor bounds its
    operators: downloading and measuring (network and CPU), then the simulated GPU work. A GPU
    slot is held for the GPU step alone, so a slot freed is refilled at once by an image
    already downloaded and measured; the image worker is sent more images than it has slots."""

    fetching: asyncio.Semaphore  # downloads and measurements at once
    gpu: asyncio.Semaphore  # simulated GPU work at once: the node's share of `image_slots`
    pixels: PixelBudget  # pixels being decoded at once: the bound on decode memory
    # Bytes held at once on the node, bodies and decodes: None, unbounded.
    memory: NodeMemory | None = None


class ImageFetcher(Protocol):
    """Downloads one image's bytes or raises `ImageDownloadError` (as `Downloader` does),
    holding the body's bytes in `memory` (when given) before it reads them."""

    async def fetch(self, url: str, memory: ImageMemory | None = None) -> bytes: ...


async def process_image(
    task: ImageTask,
    downloader: ImageFetcher,
    *,
    max_pixels: int,
    gpu_delay: tuple[float, float],
    node_id: str | None = None,
    stages: Stages | None = None,
    decode_seconds: Callable[[float], None] | None = None,
) -> ImageOutcome:
    """Settle one image. Every failure the image itself can cause becomes an outcome with a
    reason; anything else is a bug and propagates. Without `stages`, nothing bounds it.
    `decode_seconds` is told the time Pillow took over the image (identify, decode, check),
    the wait for the pixel budget left out, whether the image turned out good or not."""
    async with (
        stages.fetching if stages else contextlib.nullcontext(),
        image_memory(stages.memory if stages else None) as memory,
    ):
        # The body's bytes are held from before it is read until it is measured and dropped.
        measured = await _download_and_measure(
            task, downloader, max_pixels, node_id, stages.pixels if stages else None,
            memory, decode_seconds,
        )  # fmt: skip
    if isinstance(measured, ImageOutcome):
        return measured
    width, height = measured
    low, high = gpu_delay
    if high > 0:
        async with stages.gpu if stages else contextlib.nullcontext():
            await asyncio.sleep(random.uniform(low, high))
    return ImageOutcome(
        job_id=task.job_id,
        index=task.index,
        processed_at=time.time(),
        width=width,
        height=height,
        node_id=node_id,
    )


async def _download_and_measure(
    task: ImageTask,
    downloader: ImageFetcher,
    max_pixels: int,
    node_id: str | None,
    pixels: PixelBudget | None,
    memory: ImageMemory | None,
    decode_seconds: Callable[[float], None] | None,
) -> tuple[int, int] | ImageOutcome:
    """`(width, height)`, or the image's failure."""
    try:
        data = await downloader.fetch(task.url, memory)
    except ImageDownloadError as exc:
        return failed_outcome(
            task, FailureReason.DOWNLOAD, f"image download failed: {redact_url(task.url)}: {exc}",
            node_id,
        )  # fmt: skip
    try:
        return await _measure(data, max_pixels, pixels, memory, decode_seconds)
    except NotAnImageError as exc:
        return failed_outcome(
            task, FailureReason.NOT_AN_IMAGE, f"not an image: {redact_url(task.url)}: {exc}",
            node_id,
        )  # fmt: skip
    except BrokenImageError as exc:
        return failed_outcome(
            task, FailureReason.DECODE, f"image decode failed: {redact_url(task.url)}: {exc}",
            node_id,
        )  # fmt: skip


class Stopwatch:
    """Time spent in the `running` blocks, added up."""

    def __init__(self) -> None:
        self.spent = 0.0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spent += time.perf_counter() - start


async def _measure(
    data: bytes,
    max_pixels: int,
    pixels: PixelBudget | None,
    memory: ImageMemory | None,
    decode_seconds: Callable[[float], None] | None,
) -> tuple[int, int]:
    watch = Stopwatch()
    try:
        with watch.running():
            if len(data) > INLINE_OPEN_BYTES:
                image = await asyncio.to_thread(open_image, data, max_pixels)
            else:
                image = open_image(data, max_pixels)
        width, height = image.size
        # Every decode counts, a small one on the loop too, so the node's bound is a bound;
        # taking an uncontended budget costs ~7 us, measured here, against 0.78 ms of CPU per
        # image in all (README, Performance).
        # The decode's bytes are held before its pixels: a holder of pixels waits for nothing.
        async with (
            memory.decoding(decoded_bytes(image)) if memory else contextlib.nullcontext(),
            pixels.hold(width * height) if pixels else contextlib.nullcontext(),
        ):
            with watch.running():
                if len(data) <= INLINE_DECODE_BYTES and width * height < INLINE_DECODE_PIXELS:
                    return check_image(image)
                # Decoding a large image takes milliseconds: keep the event loop free meanwhile.
                return await asyncio.to_thread(check_image, image)
    finally:
        if decode_seconds is not None:
            decode_seconds(watch.spent)


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
