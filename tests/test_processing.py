"""The two steps of an image, bounded apart, without Ray: a GPU slot is held for the GPU step
alone, and downloads run ahead while every slot is busy."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.pool import WorkerPool
from core.models import ImageTask
from core.processing import Budget, Stages, process_image
from core.settings import Settings
from tests.imageserver import encode

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


def test_a_node_s_slots_are_split_over_one_worker_per_cpu() -> None:
    pool = WorkerPool(settings(concurrency=64), tracker=None)  # type: ignore[arg-type]
    node = {"Resources": {"CPU": 3.0, "image_slots": 32.0}}
    assert pool.worker_slots(node) == [11, 11, 10]
    assert pool.worker_slots({"Resources": {"CPU": 8.0, "image_slots": 2.0}}) == [1, 1]
    assert pool.worker_slots({"Resources": {}}) == [64]  # the default slots, one CPU
    fixed = WorkerPool(settings(workers_per_node=2), tracker=None)  # type: ignore[arg-type]
    assert fixed.worker_slots(node) == [16, 16]
