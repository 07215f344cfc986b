"""`actors.pool.WorkerPool`: the node's bounds, split between its workers, still hold for the
node. No Ray: the worker actor is replaced by a recorder."""

from __future__ import annotations

from typing import Any

import pytest

import actors.pool
from actors.pool import WorkerPool
from actors.worker import WorkerShare
from core.settings import Settings

pytestmark = pytest.mark.timeout(30)


class Started:
    """Stands for `ImageWorker`: records each worker's constructor arguments."""

    def __init__(self) -> None:
        self.workers: list[dict[str, Any]] = []

    def options(self, **_options: Any) -> Started:
        return self

    def remote(self, settings: Settings, share: WorkerShare, key: str, _t: Any) -> str:
        self.workers.append(
            {"gpu_slots": share.gpu_slots, "fetches": share.fetches, "pixels": share.decode_pixels}
        )
        return key


def node(cpus: float, slots: float) -> dict[str, Any]:
    return {"NodeID": "ab" * 28, "Alive": True, "Resources": {"CPU": cpus, "image_slots": slots}}


@pytest.mark.parametrize(("fetch_concurrency", "cpus", "slots"), [(4, 8, 64), (1, 2, 64)])
def test_a_node_s_workers_download_no_more_at_once_than_fetch_concurrency(
    monkeypatch: pytest.MonkeyPatch, fetch_concurrency: int, cpus: int, slots: int
) -> None:
    """README: FETCH_CONCURRENCY is the downloads at once per node (the bytes they hold are
    NODE_MEMORY_BUDGET's): a node never runs more workers than that."""
    started = Started()
    monkeypatch.setattr(actors.pool, "ImageWorker", started)
    pool = WorkerPool(Settings(fetch_concurrency=fetch_concurrency), tracker=None)  # type: ignore[arg-type]
    pool.refresh([node(cpus, slots)])
    assert len(started.workers) == min(cpus, fetch_concurrency)
    assert sum(w["gpu_slots"] for w in started.workers) == slots  # the GPU split holds
    assert sum(w["fetches"] for w in started.workers) <= fetch_concurrency, started.workers


@pytest.mark.parametrize("cpus", [1, 3, 16])
def test_a_node_s_workers_decode_no_more_pixels_at_once_than_its_budget(
    monkeypatch: pytest.MonkeyPatch, cpus: int
) -> None:
    """README: DECODE_PIXEL_BUDGET is per node: the workers' shares and the one image larger
    than a share that the node decodes at a time add up to it."""
    started = Started()
    monkeypatch.setattr(actors.pool, "ImageWorker", started)
    settings = Settings(decode_pixel_budget=250_000_003, max_image_pixels=10**8)
    WorkerPool(settings, tracker=None).refresh([node(cpus, 64)])  # type: ignore[arg-type]
    assert len(started.workers) == cpus
    assert sum(w["pixels"] for w in started.workers) + 10**8 == 250_000_003
