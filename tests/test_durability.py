"""Crashes and restarts with real processes and real signals: nothing lost, nothing doubled.

Each test runs one job twice, once undisturbed and once with a crash in the middle, and
compares the two per image. The image server counts requests, so a redone image shows.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.client import Client, job
from harness.imageserver import ImageServer
from harness.service import ServiceProcess, StartService
from harness.stores import ON_BOTH_BACKENDS, StoreDatabase

# Restarts whole services, on SQLite and on PostgreSQL.
pytestmark = [pytest.mark.timeout(600), pytest.mark.cluster, ON_BOTH_BACKENDS]

# Slow enough that a kill lands mid-job: 8 images at once, 50-100 ms each.
SLOW = {"IMAGE_SERVICE_GPU_DELAY": "0.05-0.1", "IMAGE_SERVICE_CONCURRENCY": "8"}
IMAGES = 300
NAMES = ["red.jpg", "green.png", "blue.webp", "tiny.gif", "wide.bmp", "tall.tiff"]


def crash_job(server: ImageServer, tag: str) -> dict[str, Any]:
    urls = [server.url(f"img/{NAMES[i % len(NAMES)]}?{tag}={i}") for i in range(IMAGES)]
    visits = [(f"RP{n + 1:05d}", urls[n * 10 : (n + 1) * 10]) for n in range(IMAGES // 10)]
    visits.append(("NOT-IN-MASTER", [server.url(f"img/red.jpg?{tag}=unknown")]))
    visits.append(("RP00999", [server.url(f"status/404?{tag}=missing")]))
    return job(*visits)


def comparable(rows: list[dict[str, Any]], tag: str) -> list[tuple[Any, ...]]:
    """Per image: everything but when and where it was processed, with the run's tag removed."""
    return [
        (
            r["store_id"],
            r["image_url"].split(f"?{tag}=")[0],
            r["state"],
            r.get("width"),
            r.get("height"),
            r.get("perimeter"),
            (r.get("error") or "").split(f"?{tag}=")[0],
        )
        for r in rows
    ]


def hits_for(server: ImageServer, tag: str) -> dict[str, int]:
    return {path: n for path, n in server.hits.items() if f"?{tag}=" in path}


def wait_until_some_done(client: Client, job_id: int, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = client.all_results(job_id)
        if sum(r["state"] != "pending" for r in rows) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError("the job made no progress")


class StatusWatcher:
    """Polls a job's status in the background and keeps every answer (code, body)."""

    def __init__(self, client: Client, job_id: int) -> None:
        self.answers: list[tuple[int, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(client, job_id), daemon=True)
        self._thread.start()

    def _run(self, client: Client, job_id: int) -> None:
        while not self._stop.is_set():
            response = client.status(job_id)
            self.answers.append((response.status_code, response.json()))
            if response.json().get("status") != "ongoing":
                return
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


@pytest.fixture(scope="module")
def slow_service(service_with: StartService) -> ServiceProcess:
    return service_with("slow", SLOW)


@pytest.fixture(scope="module")
def baseline(slow_service: ServiceProcess, image_server: ImageServer) -> list[tuple[Any, ...]]:
    client = Client(slow_service.url)
    job_id = client.submit_ok(crash_job(image_server, "base"))
    final = client.wait(job_id)
    assert final["status"] == "failed"
    assert [e["store_id"] for e in final["error"]] == ["NOT-IN-MASTER", "RP00999"]
    return comparable(client.all_results(job_id), "base")


def test_tracker_killed_mid_job_restarts_and_finishes_exactly_once(
    slow_service: ServiceProcess,
    image_server: ImageServer,
    baseline: list[tuple[Any, ...]],
    backend: str,
) -> None:
    tag = f"trk{backend}"  # the image server's counts last the session: one tag per backend
    client = Client(slow_service.url)
    tracker_pid = slow_service.probe("tracker")["pid"]
    job_id = client.submit_ok(crash_job(image_server, tag))
    wait_until_some_done(client, job_id, at_least=60)
    settled_before = {r["image_url"] for r in client.all_results(job_id) if r["state"] != "pending"}
    # Requests so far: one image may have taken several (a retried download), none is redone.
    hits_before = hits_for(image_server, tag)
    watcher = StatusWatcher(client, job_id)
    os.kill(tracker_pid, signal.SIGKILL)

    final = client.wait(job_id, timeout=180)
    watcher.stop()
    assert final["status"] == "failed"
    assert comparable(client.all_results(job_id), tag) == baseline
    # Calls during the restart waited; none failed and the status never went backwards.
    assert {code for code, _ in watcher.answers} == {200}
    states = [body["status"] for _, body in watcher.answers]
    assert states == sorted(states, key=lambda s: s != "ongoing")
    # What was settled on disk before the crash was not downloaded again after it.
    hits = hits_for(image_server, tag)
    redone = {path for path, n in hits.items() if n > hits_before.get(path, 0)}
    assert not {url for url in settled_before if url.split(str(image_server.port))[1] in redone}
    assert slow_service.probe("tracker")["pid"] != tracker_pid


def test_worker_killed_mid_job_its_images_are_redone(
    slow_service: ServiceProcess,
    image_server: ImageServer,
    baseline: list[tuple[Any, ...]],
    backend: str,
) -> None:
    tag = f"wrk{backend}"  # the image server's counts last the session: one tag per backend
    client = Client(slow_service.url)
    [[worker_pid, *_others]] = slow_service.probe("workers").values()
    job_id = client.submit_ok(crash_job(image_server, tag))
    wait_until_some_done(client, job_id, at_least=60)
    hits_before = hits_for(image_server, tag)
    os.kill(worker_pid, signal.SIGKILL)

    final = client.wait(job_id, timeout=180)
    assert final["status"] == "failed"
    assert comparable(client.all_results(job_id), tag) == baseline
    # Downloaded before the kill and again after it (a download retried is not a redo).
    redone = [
        path for path, n in hits_for(image_server, tag).items() if 0 < hits_before.get(path, 0) < n
    ]
    assert len(redone) <= 8  # at most the images that were in flight on the dead worker
    [pids] = slow_service.probe("workers").values()
    assert pids and worker_pid not in pids


def database_of(service: ServiceProcess) -> StoreDatabase:
    url = service.env_overrides.get("IMAGE_SERVICE_DATABASE_URL")
    if url:
        return StoreDatabase("postgres", url)
    return StoreDatabase("sqlite", str(service.data_dir / "jobs.sqlite3"))


# Stands in for a full disk: the insert of this store's visit fails mid-transaction.
DISK_FULL = {
    "sqlite": [
        "CREATE TRIGGER disk_full BEFORE INSERT ON visits WHEN NEW.store_id = 'RP00666'"
        " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    ],
    "postgres": [
        "CREATE FUNCTION disk_full() RETURNS trigger AS $$ BEGIN"
        " RAISE EXCEPTION 'could not extend file: No space left on device'; END $$"
        " LANGUAGE plpgsql",
        "CREATE TRIGGER disk_full BEFORE INSERT ON visits FOR EACH ROW"
        " WHEN (NEW.store_id = 'RP00666') EXECUTE FUNCTION disk_full()",
    ],
}
DISK_BACK = {
    "sqlite": ["DROP TRIGGER disk_full"],
    "postgres": ["DROP TRIGGER disk_full ON visits", "DROP FUNCTION disk_full()"],
}


def test_submission_that_cannot_be_stored_is_503_and_leaves_nothing(
    slow_service: ServiceProcess, image_server: ImageServer
) -> None:
    client = Client(slow_service.url)
    before = client.submit_ok(job(("RP00001", [image_server.url("img/red.jpg?db=1")])))
    database = database_of(slow_service)
    for statement in DISK_FULL[database.backend]:
        database.sql(statement)
    try:
        payload = job(
            ("RP00001", [image_server.url("img/red.jpg?db=2")]), ("RP00666", ["http://a.test/x"])
        )
        response = client.submit(payload)
        assert response.status_code == 503
        assert list(response.json()) == ["error"]
        failed_ids = range(before + 1, before + 3)  # PostgreSQL's sequence skips a rolled-back id
        assert {client.status(n).status_code for n in failed_ids} == {400}
    finally:
        for statement in DISK_BACK[database.backend]:
            database.sql(statement)
    after = client.submit_ok(job(("RP00001", [image_server.url("img/red.jpg?db=3")])))
    # The next job takes the next id (on PostgreSQL, the one after the id the failed one drew).
    assert after == before + (1 if database.backend == "sqlite" else 2)


def database_rows(service: ServiceProcess, job_id: int) -> int:
    [(count,)] = database_of(service).sql(f"SELECT COUNT(*) FROM results WHERE job_id = {job_id}")
    return int(count)


def test_whole_service_killed_then_restarted_resumes_everything(
    tmp_path: Path,
    image_server: ImageServer,
    baseline: list[tuple[Any, ...]],
    store_env: Callable[[str], dict[str, str]],
) -> None:
    data_dir = tmp_path / "whole"
    settings = {**SLOW, **store_env("whole")}
    first = ServiceProcess(data_dir, env_overrides=settings).start()
    try:
        client = Client(first.url)
        finished = client.submit_ok(
            job(("RP00001", [image_server.url("img/green.png?whole=done")]))
        )
        finished_status = client.wait(finished)
        finished_rows = client.all_results(finished)
        ongoing = client.submit_ok(crash_job(image_server, "kill"))
        wait_until_some_done(client, ongoing, at_least=60)
    finally:
        first.kill()

    second = ServiceProcess(data_dir, env_overrides=settings).start()
    try:
        client = Client(second.url)
        assert client.status(finished).json() == finished_status
        assert client.all_results(finished) == finished_rows
        assert client.wait(ongoing, timeout=180)["status"] == "failed"
        assert comparable(client.all_results(ongoing), "kill") == baseline
        newer = client.submit_ok(job(("RP00001", [image_server.url("img/green.png?whole=new")])))
        assert newer > ongoing

        # A clean stop (Ctrl-C) mid-job keeps everything settled before it.
        stopped = client.submit_ok(crash_job(image_server, "stop"))
        wait_until_some_done(client, stopped, at_least=60)
        settled_seen = sum(r["state"] != "pending" for r in client.all_results(stopped))
    finally:
        second.stop()
    assert database_rows(second, stopped) >= settled_seen

    third = ServiceProcess(data_dir, env_overrides=settings).start()
    try:
        client = Client(third.url)
        assert client.wait(stopped, timeout=180)["status"] == "failed"
        assert comparable(client.all_results(stopped), "stop") == baseline
    finally:
        third.stop()


def test_tracker_killed_while_cancelling_still_ends_the_job_and_calls_back(
    slow_service: ServiceProcess, image_server: ImageServer
) -> None:
    client = Client(slow_service.url)
    key = f"restart-{time.monotonic_ns()}"
    payload = {
        **crash_job(image_server, "cxl"),
        "callback_url": image_server.url(f"callback/0/{key}"),
    }
    job_id = client.submit_ok(payload)
    wait_until_some_done(client, job_id, at_least=20)
    tracker_pid = slow_service.probe("tracker")["pid"]
    cancelled = client.session.post(f"{client.base_url}/api/jobs/{job_id}/cancel", timeout=60)
    assert cancelled.status_code == 202
    os.kill(tracker_pid, signal.SIGKILL)  # images may still be in flight: nothing waits for them

    final = client.wait(job_id, timeout=180)
    assert final["status"] == "failed"
    assert any("cancelled" in entry["error"] for entry in final["error"])
    rows = client.all_results(job_id)
    assert all(row["state"] != "pending" for row in rows)
    deadline = time.monotonic() + 60
    while key not in image_server.callbacks and time.monotonic() < deadline:
        time.sleep(0.2)
    assert image_server.callbacks[key][0] == final
    detail = client.session.get(f"{client.base_url}/api/jobs/{job_id}", timeout=30).json()
    assert detail["status"] == "cancelled" and detail["done"] + detail["failed"] == detail["total"]
