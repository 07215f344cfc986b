"""The two steps of an image, bounded apart, without Ray: a GPU slot is held for the GPU step
alone, and downloads run ahead while every slot is busy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from actors.pool import WorkerPool
from actors.worker import WorkerShare
from core.images.hostlock import HostLock
from core.images.measure import open_image
from core.images.processing import Budget, DecodeBudget, Slots, Stages, process_image
from core.models import ImageTask
from core.settings import Settings
from harness.imageserver import encode

PNG = encode("PNG", 30, 20)


class CountingSemaphore(asyncio.Semaphore):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.held = 0
        self.most = 0

    async def __aenter__(self) -> None:
        await super().__aenter__()
        self.held += 1
        self.most = max(self.most, self.held)

    async def __aexit__(self, *exc: Any) -> None:
        self.held -= 1
        await super().__aexit__(*exc)


def test_downloads_run_ahead_while_every_gpu_slot_is_busy() -> None:
    gpu = CountingSemaphore(2)
    fetching = CountingSemaphore(4)
    gpu_busy_at_download: list[int] = []

    class Origin:
        async def fetch(self, url: str, memory: object = None) -> bytes:
            gpu_busy_at_download.append(gpu.held)
            await asyncio.sleep(0.005)
            return PNG

    async def main() -> list[Any]:
        stages = Stages(fetching=fetching, gpu=gpu, pixels=Budget(10**8))
        return await asyncio.gather(
            *(
                process_image(
                    ImageTask(1, index, "http://a.test/x.png"),
                    Origin(),
                    max_pixels=10**8,
                    gpu_delay=(0.02, 0.02),
                    stages=stages,
                )
                for index in range(12)
            )
        )

    outcomes = asyncio.run(main())
    assert [(o.width, o.height, o.error) for o in outcomes] == [(30, 20, None)] * 12
    assert (gpu.most, fetching.most) == (2, 4)  # each step within its own bound
    assert gpu_busy_at_download.count(2) >= 6  # most downloads happened with the GPU full


def settings(**values: Any) -> Settings:
    return Settings(**values)


def slots_and_fetches(shares: list[WorkerShare]) -> list[tuple[int, int]]:
    return [(share.gpu_slots, share.fetches) for share in shares]


def test_a_node_s_slots_and_downloads_are_split_over_one_worker_per_cpu() -> None:
    pool = WorkerPool(settings(concurrency=64, fetch_concurrency=100), tracker=None)  # type: ignore[arg-type]
    node = {"Resources": {"CPU": 3.0, "image_slots": 32.0}}
    assert slots_and_fetches(pool.worker_shares(node)) == [(11, 34), (11, 33), (10, 33)]
    few_slots = {"Resources": {"CPU": 8.0, "image_slots": 2.0}}
    assert slots_and_fetches(pool.worker_shares(few_slots)) == [(1, 50), (1, 50)]
    # The default slots, one CPU.
    assert slots_and_fetches(pool.worker_shares({"Resources": {}})) == [(64, 100)]
    fixed = WorkerPool(settings(workers_per_node=2), tracker=None)  # type: ignore[arg-type]
    assert slots_and_fetches(fixed.worker_shares(node)) == [(16, 128), (16, 128)]


def test_a_node_s_decode_budget_is_split_over_its_workers_beside_one_largest_image() -> None:
    pool = WorkerPool(
        settings(decode_pixel_budget=1_000_000, max_image_pixels=400_000),
        tracker=None,  # type: ignore[arg-type]
    )
    shares = pool.worker_shares({"Resources": {"CPU": 4.0}})
    assert [share.decode_pixels for share in shares] == [150_000] * 4
    # The defaults on a 16-CPU node: 1.6 GB at 4 bytes a pixel, where each of 16 workers held
    # up to 200 million pixels before (13 GB).
    default = WorkerPool(settings(), tracker=None)  # type: ignore[arg-type]
    shares = default.worker_shares({"Resources": {"CPU": 16.0}})
    assert [share.decode_pixels for share in shares] == [18_750_000] * 16
    assert sum(share.decode_pixels for share in shares) + 10**8 == 400_000_000


def test_a_node_s_decode_budget_holds_over_all_its_workers(tmp_path: Path) -> None:
    """Four workers (each its own shares and its own open of the node's lock file, as four
    processes have) decode images of every size at once: the pixels decoding on the node never
    pass its budget, and the largest image allowed, over any worker's share, decodes too."""
    budget, largest = 1000, 400
    pool = WorkerPool(
        settings(decode_pixel_budget=budget, max_image_pixels=largest),
        tracker=None,  # type: ignore[arg-type]
    )
    workers = [
        DecodeBudget(Budget(share.decode_pixels), HostLock(tmp_path / "decode.lock"))
        for share in pool.worker_shares({"Resources": {"CPU": 4.0}})
    ]
    sizes = [largest, 150, 1, 151, 90, 399, 60, 149] * 6
    decoding = peak = 0
    decoded: list[int] = []

    async def decode(worker: DecodeBudget, pixels: int) -> None:
        nonlocal decoding, peak
        async with worker.hold(pixels):
            decoding += pixels
            peak = max(peak, decoding)
            await asyncio.sleep(0.002)
            decoding -= pixels
        decoded.append(pixels)

    async def main() -> None:
        await asyncio.gather(
            *(decode(workers[n % len(workers)], pixels) for n, pixels in enumerate(sizes))
        )

    asyncio.run(main())
    assert sorted(decoded) == sorted(sizes)
    assert largest < peak <= budget  # side by side, within the node's budget


SMALL_HOLDERS = 20


async def acquisition_order() -> list[str]:
    """One small holder holds; a large one (the whole budget, as a 100-megapixel image under
    the default 200-megapixel budget with others decoding) asks; then, one after the other,
    each small holder lets go only once the next has asked: the budget is never idle while
    small ones keep coming. Returns who got the budget, in order."""
    budget = Budget(100)
    order: list[str] = []
    releases = [asyncio.Event() for _ in range(SMALL_HOLDERS)]

    async def small(k: int) -> None:
        async with budget.hold(30):
            order.append(f"small {k}")
            await releases[k].wait()

    async def large() -> None:
        async with budget.hold(100):
            order.append("large")

    async def settle() -> None:
        for _ in range(10):
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(small(0))]
    await settle()
    tasks.append(asyncio.create_task(large()))
    await settle()
    for k in range(1, SMALL_HOLDERS):
        tasks.append(asyncio.create_task(small(k)))  # asks after the large one
        await settle()
        releases[k - 1].set()
        await settle()
    releases[-1].set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    return order


def test_a_large_part_is_not_passed_by_smaller_ones_that_ask_after_it() -> None:
    """Were whoever fits let in, each small holder asking after the large one would go first,
    and the large one (holding its fetch slot all the while) would wait until they stopped."""
    order = asyncio.run(acquisition_order())
    assert order.index("large") <= 1, order


def test_the_slots_a_node_s_workers_report_add_up_to_its_use_and_capacity() -> None:
    """Each worker reports its own share (`WorkerMetrics.slots`): summed over a node's
    workers, busy over total is the node's utilisation, whatever the split."""
    pool = WorkerPool(settings(concurrency=64), tracker=None)  # type: ignore[arg-type]
    node = {"Resources": {"CPU": 3.0, "image_slots": 32.0}}
    workers = [Slots(share.gpu_slots) for share in pool.worker_shares(node)]
    release = asyncio.Event()
    looks: list[tuple[int, int]] = []

    async def image(slots: Slots) -> None:
        async with slots:
            await release.wait()

    async def main() -> None:
        # 12 images on a worker of 11 slots, 3 on one, none on the third: one waits.
        running = [asyncio.create_task(image(workers[0])) for _ in range(12)]
        running += [asyncio.create_task(image(workers[1])) for _ in range(3)]
        await asyncio.sleep(0.01)
        looks.append((sum(s.busy for s in workers), sum(s.total for s in workers)))
        release.set()
        await asyncio.gather(*running)
        looks.append((sum(s.busy for s in workers), sum(s.total for s in workers)))

    asyncio.run(main())
    assert looks == [(14, 32), (0, 32)]


def test_a_slot_given_up_while_waiting_for_it_never_counts_as_busy() -> None:
    slots = Slots(1)

    async def main() -> int:
        async with slots:
            waiting = asyncio.create_task(slots.acquire())
            await asyncio.sleep(0)
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            return slots.busy

    assert (asyncio.run(main()), slots.busy) == (1, 0)


def test_decode_time_is_pillow_s_alone_not_the_download_or_the_budget_wait() -> None:
    """One image waits 50 ms for its download, the next 50 ms for the pixel budget another
    holds: neither wait is in the decode time. A file that is no image is timed too."""
    told: list[float] = []
    budget = Budget(600)  # the PNG is 30 x 20 pixels: it waits for the whole budget
    with contextlib.suppress(Exception):
        open_image(b"warm up", 10)  # Pillow loads its plugins once, at the first unknown file

    class Origin:
        def __init__(self, body: bytes, delay: float) -> None:
            self._body, self._delay = body, delay

        async def fetch(self, url: str, memory: object = None) -> bytes:
            await asyncio.sleep(self._delay)
            return self._body

    async def main() -> list[Any]:
        stages = Stages(asyncio.Semaphore(2), Slots(2), budget)

        async def measure(origin: Origin) -> Any:
            return await process_image(
                ImageTask(1, 0, "http://a.test/x"), origin, max_pixels=10**8,
                gpu_delay=(0, 0), stages=stages, decode_seconds=told.append,
            )  # fmt: skip

        async def hold_budget() -> None:
            async with budget.hold(600):
                await asyncio.sleep(0.05)

        outcomes = [await measure(Origin(PNG, 0.05))]
        holder = asyncio.create_task(hold_budget())
        await asyncio.sleep(0)
        start = time.perf_counter()
        outcomes.append(await measure(Origin(PNG, 0)))
        assert time.perf_counter() - start >= 0.04  # it did wait for the budget
        await holder
        outcomes.append(await measure(Origin(b"not an image at all", 0)))
        return outcomes

    outcomes = asyncio.run(main())
    assert [(o.width, o.reason) for o in outcomes] == [
        (30, None),
        (30, None),
        (None, "not_an_image"),
    ]
    assert len(told) == 3
    assert all(0 < seconds < 0.02 for seconds in told), told
