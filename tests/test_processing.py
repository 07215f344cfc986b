"""The two steps of an image, bounded apart, without Ray: a GPU slot is held for the GPU step
alone, and downloads run ahead while every slot is busy."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.pool import WorkerPool
from core.models import ImageTask
from core.processing import Budget, Stages, process_image
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
        async def fetch(self, url: str) -> bytes:
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


def test_a_node_s_slots_and_downloads_are_split_over_one_worker_per_cpu() -> None:
    pool = WorkerPool(settings(concurrency=64, fetch_concurrency=100), tracker=None)  # type: ignore[arg-type]
    node = {"Resources": {"CPU": 3.0, "image_slots": 32.0}}
    assert pool.worker_shares(node) == [(11, 34), (11, 33), (10, 33)]
    assert pool.worker_shares({"Resources": {"CPU": 8.0, "image_slots": 2.0}}) == [
        (1, 50), (1, 50)
    ]  # fmt: skip
    assert pool.worker_shares({"Resources": {}}) == [(64, 100)]  # the default slots, one CPU
    fixed = WorkerPool(settings(workers_per_node=2), tracker=None)  # type: ignore[arg-type]
    assert fixed.worker_shares(node) == [(16, 128), (16, 128)]


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
