"""The service on Ray's autoscaler, on one machine: Ray's fake multi-node provider starts and
stops real raylets as nodes (deploy/local/autoscaling.yaml, as `make autoscale` runs it). A
big job grows the cluster and lands work on the new nodes, a small job beside it is not held
behind the scale-up, the nodes go once idle, and a node killed mid-job loses and doubles
nothing. The figures are printed and written beside the test (README, "Autoscaling")."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from harness.client import Client, job
from harness.imageserver import ImageServer, redone
from harness.nodewatch import NodeWatch, kill_fake_node
from harness.procs import alive, descendants
from harness.service import ROOT, ServiceProcess

pytestmark = [pytest.mark.timeout(420), pytest.mark.cluster]  # starts its own Ray nodes

HEAD_SLOTS, NODE_SLOTS, MAX_NODES = 4, 8, 2
DELAY = (0.1, 0.2)
ENV = {
    "IMAGE_SERVICE_AUTOSCALING_CONFIG": str(ROOT / "deploy/local/autoscaling.yaml"),
    "IMAGE_SERVICE_CONCURRENCY": str(HEAD_SLOTS),
    "IMAGE_SERVICE_GPU_DELAY": f"{DELAY[0]}-{DELAY[1]}",
    "IMAGE_SERVICE_AUTOSCALE_MAX_SLOTS": str(HEAD_SLOTS + MAX_NODES * NODE_SLOTS),
    "IMAGE_SERVICE_AUTOSCALE_RETIRE_SECONDS": "2",
    "IMAGE_SERVICE_NODE_REFRESH_INTERVAL": "0.5",
}
BIG, SMALL, SECOND = 1200, 8, 1600
# Seconds the small job may take: its 8 images at 0.15 s on 4 slots are 0.3 s; the big job's
# 1,200 queued first would hold it 45 s.
SMALL_JOB_BOUND = 8.0
# The job on the head alone could not take less than this: its slots busy all along.
HEAD_ONLY_IDEAL = BIG * (DELAY[0] + DELAY[1]) / 2 / HEAD_SLOTS


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    """The service with its autoscaler; at the end, every process it or its nodes started is
    gone (the fake nodes' raylets are the autoscaler's children, their workers Ray's)."""
    running = ServiceProcess(tmp_path / "service", env_overrides=ENV).start()
    seen: set[int] = set()
    try:
        yield running
    finally:
        assert running.process is not None
        seen = descendants([running.process.pid, running.ray_head_pgid()])
        running.stop()
        deadline = time.monotonic() + 60
        while (left := alive(seen)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"processes of the service outlived its stop: {sorted(left)}"


def tagged_job(server: ImageServer, tag: str, images: int, store: str = "RP00003") -> Any:
    return job((store, [server.url(f"img/green.png?{tag}={i}") for i in range(images)]))


def exactly_once(client: Client, job_id: int, server: ImageServer, tag: str, images: int) -> list:
    rows = client.all_results(job_id)
    assert [r["image_url"] for r in rows] == [
        server.url(f"img/green.png?{tag}={i}") for i in range(images)
    ]
    assert all(r["state"] == "done" and r["perimeter"] == 1000 for r in rows)
    return rows


def timeline(client: Client, job_id: int) -> tuple[float, float]:
    """The job's created and finished times as the service recorded them (UNIX seconds)."""
    detail = client.session.get(f"{client.base_url}/api/jobs/{job_id}", timeout=30).json()
    times = [detail["created_at"], detail["finished_at"]]
    created, finished = (
        datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t in times
    )
    return created, finished


def test_the_cluster_grows_with_the_queue_and_shrinks_when_idle(
    service: ServiceProcess, image_server: ImageServer, tmp_path: Path, capsys: Any
) -> None:
    client = Client(service.url)
    watch = NodeWatch(service)
    figures: dict[str, Any] = {"head_slots": HEAD_SLOTS, "node_slots": NODE_SLOTS}
    try:
        watch.wait_for("the head", lambda nodes: len(nodes) == 1, 60)
        [head] = watch.alive()

        # ---- a big job grows the cluster; a small one beside it is not held behind it ----
        big = client.submit_ok(tagged_job(image_server, "big", BIG))
        small = client.submit_ok(tagged_job(image_server, "small", SMALL, "S00339218"))
        submitted = time.time()
        assert client.wait(small, timeout=60)["status"] == "completed"
        small_created, small_finished = timeline(client, small)
        first = watch.wait_for("a node added", lambda nodes: len(nodes) >= 2, 90)
        full = watch.wait_for("every node added", lambda nodes: len(nodes) == 1 + MAX_NODES, 90)
        assert client.wait(big, timeout=240)["status"] == "completed"
        rows = exactly_once(client, big, image_server, "big", BIG)
        created, finished = timeline(client, big)
        added = watch.alive() - {head}
        by_node = {node: sum(r["node_id"] == node for r in rows) for node in {head, *added}}
        assert all(by_node[node] > 0 for node in added), by_node  # work landed on every node
        # Served from the head's slots beside the big job's backlog, not after it or after the
        # nodes: a few seconds at most (here it ends before the first node joins).
        assert small_finished - small_created < SMALL_JOB_BOUND, "the small job was held"
        elapsed = finished - created
        figures.update(
            small_job_seconds=round(small_finished - small_created, 2),
            small_job_ended_before_the_first_node=small_finished < first,
            scale_up_first_node_seconds=round(first - submitted, 1),
            scale_up_all_nodes_seconds=round(full - submitted, 1),
            big_job_images=BIG,
            big_job_seconds=round(elapsed, 1),
            head_only_ideal_seconds=round(HEAD_ONLY_IDEAL, 1),
            speedup_ratio_vs_head_only_ideal=round(elapsed / HEAD_ONLY_IDEAL, 2),
            # The head was busy all along: alone, it would have taken elapsed / its share.
            speedup_ratio_vs_head_measured=round(by_node[head] / BIG, 2),
            images_by_node=sorted(by_node.values(), reverse=True),
        )
        # The conservative ratio: the head alone cannot beat its ideal.
        assert elapsed < 0.6 * HEAD_ONLY_IDEAL, figures

        # ---- idle: the added nodes go ----
        done_at = time.time()
        gone = watch.wait_for("the added nodes removed", lambda nodes: nodes == {head}, 120)
        figures["scale_down_seconds"] = round(gone - done_at, 1)

        # ---- a second wave; one of its nodes is lost mid-job ----
        second = client.submit_ok(tagged_job(image_server, "wave", SECOND))
        watch.wait_for("a node added again", lambda nodes: len(nodes) >= 2, 90)
        victim = wait_for_busy_node(service, head)
        before = image_server.tagged_hits("wave")
        killed = kill_fake_node(service, victim)
        assert killed > 0
        assert client.status(second).json()["status"] == "ongoing"  # killed mid-job
        assert client.wait(second, timeout=240)["status"] == "completed"
        rows = exactly_once(client, second, image_server, "wave", SECOND)
        figures.update(
            killed_node_processes=killed,
            second_wave_images_done_before_the_kill=len(before),
            second_wave_images_redone=len(redone(before, image_server.tagged_hits("wave"))),
            second_wave_images_by_victim=sum(r["node_id"] == victim for r in rows),
        )
    finally:
        watch.stop()
        text = json.dumps(figures, indent=2, sort_keys=True)
        (tmp_path / "figures.json").write_text(text + "\n")
        with capsys.disabled():
            print(f"\nFIGURES autoscale ({tmp_path / 'figures.json'}):\n{text}", flush=True)


def wait_for_busy_node(service: ServiceProcess, head: str, timeout: float = 90) -> str:
    """A node other than the head whose image workers hold images now."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = service.probe("workers")
        busy = [node for node in workers if node != head]
        if busy:
            time.sleep(1.0)  # its workers ready: a second to take their share of the queue
            return str(busy[0])
        time.sleep(0.5)
    raise AssertionError("no worker node took images")
