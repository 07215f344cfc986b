"""The tracker's view of the image workers: one per alive node, sized by the node's capacity.

A node advertises its simulated GPU capacity as the custom resource `image_slots`
(`ray start --resources='{"image_slots": 32}'`); a node without it gets the default setting.
Nodes that join are picked up on the next refresh; workers that die are dropped and replaced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ray.actor import ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.worker import ImageWorker
from core.settings import Settings

CAPACITY_RESOURCE = "image_slots"

log = logging.getLogger(__name__)


@dataclass(eq=False)
class WorkerSlot:
    node_id: str
    handle: ActorHandle
    capacity: int
    busy: int = 0
    alive: bool = True
    # Work goes only to a worker that has answered once: a worker placed on a node that has
    # just died never starts, and images sent to it would wait for Ray to notice.
    ready: bool = False

    @property
    def free(self) -> int:
        return self.capacity - self.busy if self.alive and self.ready else 0


class WorkerPool:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._workers: dict[str, WorkerSlot] = {}

    @property
    def capacity(self) -> int:
        return sum(worker.capacity for worker in self.workers())

    def workers(self) -> list[WorkerSlot]:
        return [worker for worker in self._workers.values() if worker.alive and worker.ready]

    def refresh(self, nodes: list[dict[str, Any]]) -> list[WorkerSlot]:
        """Match the workers to the alive nodes (`ray.nodes()`); returns the workers started,
        which take work once `mark_ready` is called for them."""
        alive = {
            node["NodeID"]: node
            for node in nodes
            if node.get("Alive") and self.node_capacity(node) > 0
        }
        for node_id in list(self._workers):
            if node_id not in alive or not self._workers[node_id].alive:
                del self._workers[node_id]
        started = []
        for node_id, node in alive.items():
            if node_id not in self._workers:
                worker = self._start_worker(node_id, self.node_capacity(node))
                self._workers[node_id] = worker
                started.append(worker)
        return started

    def node_capacity(self, node: dict[str, Any]) -> int:
        advertised = node.get("Resources", {}).get(CAPACITY_RESOURCE)
        return int(advertised) if advertised is not None else self._settings.concurrency

    def acquire(self) -> WorkerSlot | None:
        """The worker with the largest share of free capacity, so load follows capacity."""
        best: WorkerSlot | None = None
        best_share = 0.0
        for worker in self._workers.values():
            if worker.free > 0:
                share = worker.free / worker.capacity
                if share > best_share:
                    best, best_share = worker, share
        if best is not None:
            best.busy += 1
        return best

    def release(self, worker: WorkerSlot) -> None:
        worker.busy -= 1

    def mark_ready(self, worker: WorkerSlot) -> None:
        worker.ready = True

    def lost(self, worker: WorkerSlot) -> None:
        if worker.alive:
            log.warning("image worker on node %s is gone; its images are requeued", worker.node_id)
        worker.alive = False

    def _start_worker(self, node_id: str, capacity: int) -> WorkerSlot:
        handle = ImageWorker.options(  # type: ignore[attr-defined]
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            # Headroom above capacity so `pid`-style control calls never queue behind images.
            max_concurrency=capacity + 8,
        ).remote(self._settings, capacity)
        log.info("started an image worker on node %s with capacity %d", node_id, capacity)
        return WorkerSlot(node_id=node_id, handle=handle, capacity=capacity)
