"""The service on a multi-node Ray cluster on this machine: a head and worker nodes joined with
`ray start --address`, each with its own `image_slots` capacity."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness.client import Client, job
from harness.imageserver import ImageServer, redone
from harness.procs import descendants
from harness.service import ServiceProcess, WorkerNode

pytestmark = [pytest.mark.timeout(600), pytest.mark.cluster]  # starts its own Ray nodes

SLOTS = {"IMAGE_SERVICE_CONCURRENCY": "4", "IMAGE_SERVICE_GPU_DELAY": "0.05-0.1"}
# A worker node (one CPU, so one image worker) with 4 slots holds 4 images in its GPU step and
# one fetched ahead of each (IMAGE_SERVICE_FETCH_AHEAD).
VICTIM_HOLDS = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = ServiceProcess(tmp_path_factory.mktemp("cluster"), env_overrides=SLOTS).start()
    nodes: list[WorkerNode] = []
    service.nodes = nodes  # type: ignore[attr-defined]
    try:
        for _ in range(2):
            nodes.append(WorkerNode(service, image_slots=4).start())
        wait_for_workers(service, 3)
        yield service
    finally:
        for node in nodes:
            node.stop()
        service.stop()


def wait_for_workers(
    service: ServiceProcess, count: int, timeout: float = 120
) -> dict[str, list[int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = service.probe("workers")
        if len(workers) >= count:
            return dict(workers)
        time.sleep(1)
    raise AssertionError(f"fewer than {count} image workers after {timeout}s")


def cluster_job(server: ImageServer, tag: str, images: int) -> dict[str, Any]:
    urls = [server.url(f"img/green.png?{tag}={i}") for i in range(images)]
    return job(*[(f"RP{n + 1:05d}", urls[n * 10 : (n + 1) * 10]) for n in range(images // 10)])


def nodes_of(rows: list[dict[str, Any]]) -> set[str]:
    return {row["node_id"] for row in rows}


def assert_exactly_once(
    client: Client, job_id: int, server: ImageServer, tag: str, images: int
) -> None:
    rows = client.all_results(job_id)
    assert [r["image_url"] for r in rows] == [
        server.url(f"img/green.png?{tag}={i}") for i in range(images)
    ]
    assert all(r["state"] == "done" and r["perimeter"] == 1000 for r in rows)


def test_work_lands_on_every_node(cluster: ServiceProcess, image_server: ImageServer) -> None:
    client = Client(cluster.url)
    workers = cluster.probe("workers")
    job_id = client.submit_ok(cluster_job(image_server, "spread", 240))
    assert client.wait(job_id, timeout=180)["status"] == "completed"
    rows = client.all_results(job_id)
    assert_exactly_once(client, job_id, image_server, "spread", 240)
    assert nodes_of(rows) == set(workers)
    per_node = [sum(r["node_id"] == node for r in rows) for node in workers]
    assert min(per_node) >= 240 / 3 * 0.5  # equal capacities share the work roughly equally


def test_node_that_dies_mid_job_has_its_images_redone(
    cluster: ServiceProcess, image_server: ImageServer
) -> None:
    client = Client(cluster.url)
    before = cluster.probe("workers")
    victim: WorkerNode = cluster.nodes[0]  # type: ignore[attr-defined]
    own = descendants([victim.process.pid]) if victim.process else set()
    [victim_id] = [node for node, pids in before.items() if set(pids) & own]
    job_id = client.submit_ok(cluster_job(image_server, "nodekill", 300))
    # Strike once the victim has done some of the job and, with images still queued, holds
    # all it can (its 4 slots and 4 images fetched ahead), some past their download.
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "the victim node never took part in the job"
        done_there = [r for r in client.all_results(job_id) if r.get("node_id") == victim_id]
        now = client.session.get(f"{cluster.url}/api/jobs/{job_id}", timeout=30).json()
        assert now["status"] == "ongoing", "the job ended before the node died"
        if done_there and now["queued"] > 0 and now["in_flight"] > 0:
            break
        time.sleep(0.05)
    downloaded = image_server.tagged_hits("nodekill")
    victim.kill()
    assert client.wait(job_id, timeout=240)["status"] == "completed"
    assert_exactly_once(client, job_id, image_server, "nodekill", 300)
    # What the victim held was done again, elsewhere; nothing more.
    again = redone(downloaded, image_server.tagged_hits("nodekill"))
    assert 1 <= len(again) <= VICTIM_HOLDS
    rows = client.all_results(job_id)
    assert victim_id not in {rows[index]["node_id"] for index in again}
    after = cluster.probe("workers")
    assert len(after) == len(before) - 1 and victim_id not in after


def test_node_that_joins_mid_job_takes_work(
    cluster: ServiceProcess, image_server: ImageServer
) -> None:
    # About 30 s of work on the nodes there (12 slots at 0.05-0.1 s): long enough for a node
    # to start and join on a loaded machine, which took more than the 12 s of 2,000 images.
    images = 5000
    client = Client(cluster.url)
    known = set(cluster.probe("workers"))
    job_id = client.submit_ok(cluster_job(image_server, "join", images))
    newcomer = WorkerNode(cluster, image_slots=8).start()
    cluster.nodes.append(newcomer)  # type: ignore[attr-defined]
    wait_for_workers(cluster, len(known) + 1)
    now = client.session.get(f"{cluster.url}/api/jobs/{job_id}", timeout=30).json()
    assert now["status"] == "ongoing" and now["queued"] > 0, "the job ended before the join"
    assert client.wait(job_id, timeout=240)["status"] == "completed"
    assert_exactly_once(client, job_id, image_server, "join", images)
    joined = nodes_of(client.all_results(job_id)) - known
    assert len(joined) == 1
