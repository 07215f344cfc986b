"""The tracker's view of the image workers: one per alive node, sized by the node's capacity.

A node advertises its simulated GPU capacity as the custom resource `image_slots`
(`ray start --resources='{"image_slots": 32}'`); a node without it gets the default setting.
Nodes that join are picked up on the next refresh; workers that die are dropped and replaced.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from ray.actor import ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.worker import ImageWorker
from core.settings import Settings

CAPACITY_RESOURCE = "image_slots"

log = logging.getLogger(__name__)

ImageKey = tuple[int, int]  # (job id, image index)


@dataclass(eq=False)
class WorkerSlot:
    key: str
    node_id: str
    handle: ActorHandle
    capacity: int
    in_flight: set[ImageKey] = field(default_factory=set)
    alive: bool = True
    # Work goes only to a worker that has answered once: a worker placed on a node that has
    # just died never starts, and images sent to it would wait for Ray to notice.
    ready: bool = False

    @property
    def free(self) -> int:
        return self.capacity - len(self.in_flight) if self.alive and self.ready else 0


class WorkerPool:
    def __init__(self, settings: Settings, tracker: ActorHandle) -> None:
        self._settings = settings
        self._tracker = tracker
        self._workers: dict[str, WorkerSlot] = {}  # by node id
        self._by_key: dict[str, WorkerSlot] = {}

    @property
    def capacity(self) -> int:
        return sum(worker.capacity for worker in self.workers())

    @property
    def in_flight(self) -> int:
        return sum(len(worker.in_flight) for worker in self._by_key.values())

    def in_flight_of(self, job_id: int) -> set[int]:
        """Indexes of the job's images now held by workers."""
        return {
            index
            for worker in self._by_key.values()
            for held_job, index in worker.in_flight
            if held_job == job_id
        }

    def workers(self) -> list[WorkerSlot]:
        return [worker for worker in self._workers.values() if worker.alive and worker.ready]

    def by_key(self, key: str) -> WorkerSlot | None:
        return self._by_key.get(key)

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
                self._by_key[worker.key] = worker
                started.append(worker)
        return started

    def node_capacity(self, node: dict[str, Any]) -> int:
        advertised = node.get("Resources", {}).get(CAPACITY_RESOURCE)
        return int(advertised) if advertised is not None else self._settings.concurrency

    def freest_first(self) -> list[WorkerSlot]:
        """The workers with free capacity, the largest share free first, so load follows
        capacity."""
        free = [worker for worker in self._workers.values() if worker.free > 0]
        return sorted(free, key=lambda worker: worker.free / worker.capacity, reverse=True)

    def mark_ready(self, worker: WorkerSlot) -> None:
        worker.ready = True

    def lost(self, worker: WorkerSlot) -> set[ImageKey]:
        """Forget a dead worker; returns the images it held, to be dispatched again."""
        if worker.alive:
            log.warning("image worker on node %s is gone; its images are requeued", worker.node_id)
        worker.alive = False
        self._by_key.pop(worker.key, None)
        orphans, worker.in_flight = worker.in_flight, set()
        return orphans

    def _start_worker(self, node_id: str, capacity: int) -> WorkerSlot:
        key = uuid.uuid4().hex
        handle = ImageWorker.options(  # type: ignore[attr-defined]
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            # Headroom above the image batches so control calls (`pid`, `lifeline`) always run.
            max_concurrency=capacity + 16,
        ).remote(self._settings, capacity, key, self._tracker)
        log.info("started an image worker on node %s with capacity %d", node_id, capacity)
        return WorkerSlot(key=key, node_id=node_id, handle=handle, capacity=capacity)
