"""The tracker's view of the image workers: a few per alive node (one per CPU by default),
sharing the node's capacity.

A node advertises its simulated GPU capacity as the custom resource `image_slots`
(`ray start --resources='{"image_slots": 32}'`); a node without it gets the default setting.
Its workers split the slots between them, so every core of the node works on downloads and
image checks while the tracker still sees one capacity per node. Nodes that join are picked
up on the next refresh; workers that die are dropped and replaced.

Each worker reserves its share of its node's `image_slots` from Ray, so a node with image
workers is busy to Ray's autoscaler (and to the dashboard's resource view), and one whose
workers were retired (`retire`, when autoscaling) is idle, free for it to remove.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from ray.actor import ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.worker import ImageWorker, WorkerShare
from core.jobs import ImageKey
from core.settings import IMAGE_SLOTS, Settings

log = logging.getLogger(__name__)

# The resource only Ray's head node has.
HEAD = "node:__internal_head__"


@dataclass(eq=False)
class WorkerSlot:
    key: str
    node_id: str
    index: int  # which of its node's workers
    handle: ActorHandle
    gpu_slots: int  # its share of the node's `image_slots`
    capacity: int  # images it may hold: its GPU slots and the images downloaded ahead of them
    in_flight: set[ImageKey] = field(default_factory=set)
    alive: bool = True
    # Work goes only to a worker that has answered once: a worker placed on a node that has
    # just died never starts, and images sent to it would wait for Ray to notice.
    ready: bool = False

    @property
    def free(self) -> int:
        return self.capacity - len(self.in_flight) if self.alive and self.ready else 0


def split(total: int, parts: int) -> list[int]:
    """`total` in `parts` shares that differ by one at most."""
    return [total // parts + (index < total % parts) for index in range(parts)]


class WorkerPool:
    def __init__(self, settings: Settings, tracker: ActorHandle) -> None:
        self._settings = settings
        self._tracker = tracker
        self._workers: dict[str, list[WorkerSlot]] = {}  # by node id
        self._by_key: dict[str, WorkerSlot] = {}
        self._heads: set[str] = set()
        # Worker nodes whose workers were retired: no workers start there until `recall`.
        self._retired: set[str] = set()

    @property
    def capacity(self) -> int:
        """Simulated GPU slots of the ready workers."""
        return sum(worker.gpu_slots for worker in self.workers())

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
        return [
            worker
            for node in self._workers.values()
            for worker in node
            if worker.alive and worker.ready
        ]

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
        self._heads = {
            node_id for node_id, node in alive.items() if HEAD in node.get("Resources", {})
        }
        self._retired &= set(alive)
        for node_id in list(self._workers):
            if node_id not in alive:
                del self._workers[node_id]
            else:
                self._workers[node_id] = [w for w in self._workers[node_id] if w.alive]
        started = []
        for node_id, node in alive.items():
            if node_id in self._retired:
                continue
            running = self._workers.setdefault(node_id, [])
            taken = {worker.index for worker in running}
            for index, share in enumerate(self.worker_shares(node)):
                if index not in taken:
                    reserve = IMAGE_SLOTS in node.get("Resources", {})
                    worker = self._start_worker(node_id, index, share, reserve)
                    running.append(worker)
                    self._by_key[worker.key] = worker
                    started.append(worker)
        return started

    def node_capacity(self, node: dict[str, Any]) -> int:
        advertised = node.get("Resources", {}).get(IMAGE_SLOTS)
        return int(advertised) if advertised is not None else self._settings.concurrency

    def worker_shares(self, node: dict[str, Any]) -> list[WorkerShare]:
        """The GPU slots, the downloads at once and the pixels decoded at once of each of the
        node's workers: the node's capacity, FETCH_CONCURRENCY and DECODE_PIXEL_BUDGET split
        evenly, so each bound holds for the node. Of the budget, MAX_IMAGE_PIXELS are kept
        for the one image at a time that is larger than a worker's share."""
        slots, fetches = self.node_capacity(node), self._settings.fetch_concurrency
        pixels = self._settings.decode_pixel_budget - self._settings.max_image_pixels
        wanted = self._settings.workers_per_node or int(node.get("Resources", {}).get("CPU", 1))
        count = max(1, min(wanted, slots, fetches))
        return [
            WorkerShare(*share)
            for share in zip(
                split(slots, count), split(fetches, count), split(pixels, count), strict=True
            )
        ]

    def freest_first(self) -> list[WorkerSlot]:
        """The workers with free capacity, the largest share free first, so load follows
        capacity."""
        free = [worker for node in self._workers.values() for worker in node if worker.free > 0]
        return sorted(free, key=lambda worker: worker.free / worker.capacity, reverse=True)

    def held_by_worker_node(self) -> dict[str, int]:
        """Images held by each worker node's workers (the head's are never retired)."""
        return {
            node_id: sum(len(worker.in_flight) for worker in workers)
            for node_id, workers in self._workers.items()
            if node_id not in self._heads and node_id not in self._retired
        }

    def retire(self, node_id: str) -> list[WorkerSlot]:
        """Take the node's workers out of dispatch and keep new ones off it until `recall`;
        returns them, for the caller to stop. Only for a node whose workers hold nothing."""
        workers = self._workers.pop(node_id, [])
        assert not any(worker.in_flight for worker in workers), "retiring a busy node"
        for worker in workers:
            worker.alive = False  # its death, when it is stopped, is no loss
            self._by_key.pop(worker.key, None)
        self._retired.add(node_id)
        return workers

    def recall(self) -> bool:
        """Let workers start again on the retired nodes still there (at the next refresh);
        whether there were any."""
        had, self._retired = bool(self._retired), set()
        return had

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

    def _start_worker(
        self, node_id: str, index: int, share: WorkerShare, reserve: bool
    ) -> WorkerSlot:
        key = uuid.uuid4().hex
        capacity = share.gpu_slots + math.ceil(share.gpu_slots * self._settings.fetch_ahead)
        handle = ImageWorker.options(  # type: ignore[attr-defined]
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            # Its share of the slots the node advertises (a node without them reserves none).
            resources={IMAGE_SLOTS: share.gpu_slots} if reserve else {},
            # Headroom above the image batches so control calls (`pid`, `lifeline`) always run.
            max_concurrency=capacity + 16,
        ).remote(self._settings, share, key, self._tracker)
        log.info(
            "started image worker %d on node %s: %d GPU slots, %d images held at most, "
            "%d pixels decoded at once besides the node's one larger image",
            index, node_id, share.gpu_slots, capacity, share.decode_pixels,
        )  # fmt: skip
        return WorkerSlot(key, node_id, index, handle, share.gpu_slots, capacity)
