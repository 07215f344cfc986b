"""An image's path holds its node's byte budget: the body's bytes before a byte of it is read,
the decode's while it decodes, and gives everything back however the image ends. Against an
origin in the same loop, which notes what the node holds while it sends."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from core.images.fetch import Downloader, FetchLimits
from core.images.nodememory import ImageMemory, Kind, NodeMemory, image_memory
from core.images.processing import Budget, Slots, Stages, process_image
from core.images.urlguard import AddressPolicy
from core.models import ImageOutcome, ImageTask
from core.settings import Settings
from harness.imageserver import encode

pytestmark = pytest.mark.timeout(30)

PNG = encode("PNG", 300, 200)  # decodes into 300 x 200 x 4 bytes
CAP = 1_000_000
LIMITS = FetchLimits.from_settings(
    Settings(retry_backoff=0.01, download_retries=1, max_image_bytes=CAP, read_timeout=5)
)


class Origin:
    """Serves PNG in two halves, noting between them the bytes the node holds."""

    def __init__(self, node: NodeMemory) -> None:
        self.node = node
        self.seen: list[int] = []  # the bytes held while a body is half sent
        self.bodies: list[int] = []  # ... of them, bodies
        self.asked: list[int] = []  # ... and when a request comes, before any answer
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()

    async def send(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        self.asked.append(self.node.in_use)
        body = PNG[: len(PNG) // 2] if kind == "truncated" else PNG
        response = web.StreamResponse()
        if kind == "gzip":
            body = gzip.compress(body)
            response.headers["Content-Encoding"] = "gzip"
        if kind in ("plain", "gzip", "truncated", "cut", "stall"):
            response.content_length = len(body)
        # else ("chunked") no Content-Length: chunked transfer encoding
        await response.prepare(request)
        half = len(body) // 2
        await response.write(body[:half])
        await asyncio.sleep(0.01)
        self.seen.append(self.node.in_use)
        self.bodies.append(self.node.bodies)
        if kind == "cut":
            assert request.transport is not None
            request.transport.close()  # fewer bytes than declared: a broken download
            return response
        if kind == "stall":
            self.stalled.set()
            await self.release.wait()
        await response.write(body[half:])
        await response.write_eof()
        return response


@asynccontextmanager
async def serving(tmp_path: Path, total: int = 10_000_000) -> AsyncIterator[tuple[Origin, str]]:
    node = NodeMemory(tmp_path / "memory", total)
    origin = Origin(node)
    app = web.Application()
    app.router.add_get("/{kind}", origin.send)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield origin, f"http://127.0.0.1:{port}"
    finally:
        origin.release.set()
        await runner.cleanup()
        node.close()


async def process(origin: Origin, url: str) -> ImageOutcome:
    downloader = Downloader(LIMITS, AddressPolicy(allow_private=True))
    stages = Stages(asyncio.Semaphore(4), Slots(4), Budget(10**8), origin.node)
    try:
        return await process_image(
            ImageTask(1, 0, url), downloader, max_pixels=10**8, gpu_delay=(0, 0), stages=stages
        )
    finally:
        await downloader.close()


@pytest.mark.parametrize(
    ("kind", "held_while_read"),
    [
        ("plain", len(PNG)),  # its Content-Length
        ("chunked", CAP),  # no length: the cap, up front
        ("gzip", CAP),  # the length is the compressed one: the cap too
    ],
)
def test_a_body_is_held_before_it_is_read_and_everything_is_given_back(
    tmp_path: Path, kind: str, held_while_read: int
) -> None:
    async def main() -> None:
        async with serving(tmp_path) as (origin, base):
            outcome = await process(origin, f"{base}/{kind}")
            assert (outcome.width, outcome.height, outcome.error) == (300, 200, None)
            assert origin.seen == [held_while_read]
            assert origin.node.in_use == 0

    asyncio.run(main())


def test_the_body_and_the_decode_are_held_together_while_it_decodes(tmp_path: Path) -> None:
    """A body of unknown size keeps, once read, only its length; its decode holds its pixels
    at 4 bytes each beside it."""
    held: list[int] = []

    async def main() -> None:
        async with serving(tmp_path) as (origin, base):
            downloader = Downloader(LIMITS, AddressPolicy(allow_private=True))
            try:
                async with image_memory(origin.node) as memory:
                    assert memory is not None
                    data = await downloader.fetch(f"{base}/chunked", memory)
                    held.append(origin.node.in_use)
                    async with memory.decoding(300 * 200 * 4):
                        held.append(origin.node.in_use)
                held.append(origin.node.in_use)
            finally:
                await downloader.close()
            assert data == PNG

    asyncio.run(main())
    assert held == [len(PNG), len(PNG) + 240_000, 0]


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("cut", "image download failed"),  # broken twice (a retry), then a failure
        ("truncated", "image decode failed"),
    ],
)
def test_an_image_that_fails_gives_everything_back(tmp_path: Path, kind: str, error: str) -> None:
    async def main() -> None:
        async with serving(tmp_path) as (origin, base):
            outcome = await process(origin, f"{base}/{kind}")
            assert outcome.error is not None and outcome.error.startswith(error), outcome.error
            assert origin.seen[0] == (len(PNG) if kind == "cut" else len(PNG) // 2)
            # A broken body is given back before the retry, not held through its backoff.
            assert origin.asked == ([0, 0] if kind == "cut" else [0])
            assert origin.node.in_use == 0

    asyncio.run(main())


def test_an_image_cancelled_while_its_body_is_read_gives_it_back(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as (origin, base):
            running = asyncio.create_task(process(origin, f"{base}/stall"))
            await asyncio.wait_for(origin.stalled.wait(), 5)
            assert origin.node.in_use == len(PNG)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            assert origin.node.in_use == 0

    asyncio.run(main())


def test_an_image_larger_than_the_budget_still_completes(tmp_path: Path) -> None:
    """A budget of 600 bytes, less than the body (638) and its decode: each runs alone."""

    async def main() -> None:
        async with serving(tmp_path, total=600) as (origin, base):
            outcomes = await asyncio.gather(*(process(origin, f"{base}/plain") for _ in range(4)))
            assert [(o.width, o.error) for o in outcomes] == [(300, None)] * 4
            # Bodies may hold half: one body at a time, whoever is sent (a body is sent while
            # its reader waits for its turn, into the socket's buffers).
            assert max(origin.bodies) == 300, origin.bodies
            assert origin.node.in_use == 0

    asyncio.run(main())


def test_an_image_cancelled_while_it_waits_to_decode_gives_its_body_back(
    tmp_path: Path,
) -> None:
    """A node of 300 kB, 100 kB of it decoding elsewhere: the body (638 bytes) is read, and
    its decode (240 kB) waits."""

    async def main() -> None:
        async with serving(tmp_path, total=300_000) as (origin, base):
            node = origin.node
            blocker = await node.take(Kind.DECODE, 100_000)
            running = asyncio.create_task(process(origin, f"{base}/plain"))
            while node.in_use != 100_000 + len(PNG):  # its body is read
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            assert not running.done()
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            assert node.in_use == 100_000
            node.give_back(Kind.DECODE, blocker)

    asyncio.run(main())


def test_the_wait_for_room_is_not_counted_in_the_download_timeout(tmp_path: Path) -> None:
    """Another holder keeps the whole budget for longer than the download may take: the
    download waits, then completes. Counted, the wait failed phone photos as "not downloaded
    within 4 s" on a node short of memory (bench.photos, 2 of 6 runs)."""
    limits = FetchLimits.from_settings(
        Settings(download_timeout=0.5, download_retries=0, max_image_bytes=CAP, read_timeout=5)
    )

    async def main() -> None:
        async with serving(tmp_path, total=10_000) as (origin, base):
            other = ImageMemory(origin.node)
            await other.hold_body(5_000)  # all a body may hold: half the budget
            downloader = Downloader(limits, AddressPolicy(allow_private=True))
            mine = ImageMemory(origin.node)
            try:
                fetching = asyncio.create_task(downloader.fetch(f"{base}/plain", mine))
                await asyncio.sleep(1.0)  # twice the download timeout, waiting for room
                assert not fetching.done()
                other.drop_body()
                body = await asyncio.wait_for(fetching, 5)
            finally:
                await downloader.close()
            assert body == PNG
            mine.drop_body()
            assert origin.node.in_use == 0

    asyncio.run(main())
