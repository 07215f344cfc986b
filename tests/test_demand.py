"""`core.demand` and `actors.autoscale.Autoscaling`: what the tracker asks Ray's autoscaler for,
and which worker nodes it lets go. No Ray: the request and the stop are recorders."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import actors.autoscale
import actors.pool
from actors.autoscale import Autoscaling
from actors.pool import HEAD, WorkerPool
from core.demand import IdleNodes, bundles, wanted_slots
from core.jobs import ActiveJob, JobBook, JobLimits
from core.settings import Settings

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("waiting", "in_flight", "fetch_ahead", "max_slots", "wanted"),
    [
        (0, 0, 1.0, 20, 0),  # no backlog: the request is dropped
        (20_000, 0, 1.0, 20, 20),  # bounded by the setting
        (9, 0, 1.0, 20, 5),  # a slot holds its GPU image and one fetched ahead
        (0, 8, 1.0, 20, 4),  # images in flight keep their nodes asked for
        (3, 0, 0.0, 20, 3),
    ],
)
def test_the_request_follows_the_backlog_within_the_bound(
    waiting: int, in_flight: int, fetch_ahead: float, max_slots: int, wanted: int
) -> None:
    assert wanted_slots(waiting, in_flight, fetch_ahead, max_slots) == wanted


def test_a_request_is_one_slot_bundles_that_fit_any_node() -> None:
    assert bundles(3) == [{"image_slots": 1.0}] * 3
    assert bundles(0) == []


def test_a_node_is_due_once_idle_long_enough_and_busy_again_resets_it() -> None:
    idle = IdleNodes()
    idle.update({"a": 0, "b": 2}, now=0.0)
    assert idle.due(1.9, after=2) == []
    idle.update({"a": 0, "b": 0}, now=1.0)
    assert idle.due(2.0, after=2) == ["a"]
    idle.update({"a": 1, "b": 0}, now=2.5)  # a took an image: its idle time starts over
    idle.update({"a": 0, "b": 0}, now=3.0)
    assert idle.due(3.5, after=2) == ["b"]
    assert idle.due(5.0, after=2) == ["a", "b"]


class Started:
    """Stands for `ImageWorker`: records the options of each worker started."""

    def __init__(self) -> None:
        self.options_seen: list[dict[str, Any]] = []

    def options(self, **options: Any) -> Started:
        self.options_seen.append(options)
        return self

    def remote(self, *_args: Any) -> object:
        return object()


class Lead:
    dispatching = True


class Jobs:
    def __init__(self) -> None:
        self.book = JobBook(JobLimits(10, 1000, 3))


HEAD_ID, GPU_ID = "a0" * 28, "b1" * 28


def nodes() -> list[dict[str, Any]]:
    head = {"CPU": 1.0, "image_slots": 4.0, HEAD: 1.0}
    return [
        {"NodeID": HEAD_ID, "Alive": True, "Resources": head},
        {"NodeID": GPU_ID, "Alive": True, "Resources": {"CPU": 1.0, "image_slots": 8.0}},
    ]


class Rig:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> None:
        self.started = Started()
        monkeypatch.setattr(actors.pool, "ImageWorker", self.started)
        monkeypatch.setattr(actors.autoscale, "STEP_SECONDS", 0)
        self.settings = Settings(fetch_ahead=1.0, **settings)
        self.pool = WorkerPool(self.settings, tracker=None)  # type: ignore[arg-type]
        self.jobs = Jobs()
        self.requests: list[int] = []
        self.stopped: list[object] = []
        self.now = 0.0
        self.autoscaling = Autoscaling(
            self.settings,
            self.jobs,  # type: ignore[arg-type]
            self.pool,
            Lead(),  # type: ignore[arg-type]
            request=lambda request: self.requests.append(len(request)),
            stop=self.stopped.append,
            clock=lambda: self.now,
        )
        for worker in self.pool.refresh(nodes()):
            self.pool.mark_ready(worker)

    def step(self, at: float) -> None:
        self.now = at
        asyncio.run(self.autoscaling.step())


def test_workers_reserve_their_share_of_the_slots_their_node_advertises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = Rig(monkeypatch)
    reserved = sorted(options["resources"]["image_slots"] for options in rig.started.options_seen)
    assert reserved == [4, 8]  # so the autoscaler sees a node with workers as busy
    WorkerPool(rig.settings, tracker=None).refresh(  # type: ignore[arg-type]
        [{"NodeID": "c2" * 28, "Alive": True, "Resources": {"CPU": 1.0}}]
    )
    assert rig.started.options_seen[-1]["resources"] == {}  # none to reserve: none asked


def test_without_the_setting_nothing_is_asked_and_no_worker_retired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = Rig(monkeypatch)
    for at in (0.0, 100.0):
        rig.step(at)
    assert rig.requests == [] and rig.stopped == []


def test_the_request_rises_with_a_job_and_drops_when_it_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = Rig(monkeypatch, autoscale_max_slots=20, autoscale_retire_seconds=5)
    rig.step(0.0)
    rig.jobs.book.activate(ActiveJob(1, [f"http://a.test/{i}" for i in range(100)], bytearray(100)))
    rig.step(1.0)
    rig.step(2.0)  # unchanged: not sent again
    rig.jobs.book.finished([1])  # its images settled (or were cancelled): none waits
    rig.step(3.0)
    assert rig.requests == [0, 20, 0]


def test_an_idle_worker_node_is_retired_and_a_backlog_brings_it_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = Rig(monkeypatch, autoscale_max_slots=20, autoscale_retire_seconds=5)
    [gpu_worker] = [w for w in rig.pool.workers() if w.node_id == GPU_ID]
    gpu_worker.in_flight.add((9, 0))  # it holds an image: never retired while it does
    rig.step(0.0)
    rig.step(10.0)
    assert rig.stopped == []
    gpu_worker.in_flight.clear()
    rig.step(11.0)
    rig.step(15.9)
    assert rig.stopped == []
    rig.step(16.0)
    assert rig.stopped == [gpu_worker.handle]  # the head's worker stays
    assert [w.node_id for w in rig.pool.workers()] == [HEAD_ID]
    assert rig.pool.refresh(nodes()) == []  # nothing starts on a retired node
    rig.jobs.book.activate(ActiveJob(2, ["http://a.test/x"] * 30, bytearray(30)))
    rig.step(17.0)
    [again] = rig.pool.refresh(nodes())
    assert again.node_id == GPU_ID
