"""Two services (two Ray clusters on this machine) on one PostgreSQL database, as during a
KubeRay upgrade: one tracker dispatches, the other stands by, answers reads and records
submissions, and takes the unfinished jobs over when the first stops (Ctrl-C) or dies
(SIGKILL). Every image ends with exactly one result; job ids stay unique."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.client import Client, job
from harness.imageserver import ImageServer
from harness.postgres import PostgresServer
from harness.service import ServiceProcess
from harness.stores import StoreDatabase

pytestmark = [pytest.mark.timeout(600), pytest.mark.cluster, pytest.mark.postgres]

IMAGES = 200
# Slow enough that the stop lands mid-job.
SETTINGS = {"IMAGE_SERVICE_GPU_DELAY": "0.05-0.1", "IMAGE_SERVICE_CONCURRENCY": "2"}
# A short lease, so that a dead holder's expires soon; for Ctrl-C, one long enough that the
# standby can take over before it expires only if the stop released it: the standby looks for
# the lease every third of a lease (10 s), and the holder's has 20 s or more left at any time.
LEASE_SECONDS = {"sigkill": "3", "ctrl-c": "30"}


# Who holds the dispatch lease, and until when by the database's clock; no row when no one does.
LEASE = "SELECT holder, expires_at FROM leases WHERE name = 'dispatch'"


def big_job(server: ImageServer, tag: str) -> dict[str, object]:
    urls = [server.url(f"img/green.png?{tag}={i}") for i in range(IMAGES)]
    return job(*[(f"RP{n + 1:05d}", urls[n * 20 : (n + 1) * 20]) for n in range(IMAGES // 20)])


def settled(client: Client, job_id: int) -> int:
    return sum(row["state"] != "pending" for row in client.all_results(job_id))


@pytest.mark.parametrize("stop", ["ctrl-c", "sigkill"])
def test_the_standby_cluster_finishes_the_jobs_of_one_that_stops(
    tmp_path: Path, postgres_server: PostgresServer, image_server: ImageServer, stop: str
) -> None:
    url = postgres_server.empty_database(f"takeover_{stop.replace('-', '_')}")
    settings = {
        **SETTINGS,
        "IMAGE_SERVICE_DATABASE_URL": url,
        "IMAGE_SERVICE_LEASE_SECONDS": LEASE_SECONDS[stop],
    }
    database = StoreDatabase("postgres", url)
    first = ServiceProcess(tmp_path / "first", env_overrides=settings).start()
    second = ServiceProcess(tmp_path / "second", env_overrides=settings).start()
    try:
        assert first.probe("tracker")["leading"] is True
        assert second.probe("tracker")["leading"] is False
        on_first, on_second = Client(first.url), Client(second.url)

        # Recorded by the standby, run by the leader (it picks up such jobs every third of a
        # lease), readable on both.
        queued = on_second.submit_ok(job(("RP00001", [image_server.url(f"img/red.jpg?{stop}=q")])))
        assert on_second.wait(queued, timeout=60) == {"status": "completed", "job_id": queued}
        assert on_first.status(queued).json() == {"status": "completed", "job_id": queued}
        # The standby answers results and job lists too, from the shared database. Broken by a
        # standby that sends reads to the leader, or answers them 503 as it does a cancel.
        [only] = on_second.all_results(queued)
        assert [only] == on_first.all_results(queued) and only["state"] == "done"
        on_leader = on_first.session.get(f"{first.url}/api/jobs/{queued}", timeout=30).json()

        running = on_first.submit_ok(big_job(image_server, f"{stop}-a"))
        listed = on_second.session.get(f"{second.url}/api/jobs", timeout=30)
        assert listed.status_code == 200
        assert [j["job_id"] for j in listed.json()["jobs"]] == [running, queued]
        assert listed.json()["jobs"][1] == on_leader
        cancel = on_second.session.post(f"{second.url}/api/jobs/{running}/cancel", timeout=30)
        assert cancel.status_code == 503 and "Retry-After" in cancel.headers

        deadline = time.monotonic() + 60
        while settled(on_first, running) < 40:
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.05)
        assert settled(on_second, running) < IMAGES - 20, "the job would end before the stop"
        [(holder, held_until)] = database.read(LEASE)
        if stop == "ctrl-c":
            first.stop()
            # The drain gave the lease up (the standby may have taken it already), and the
            # standby took it before the first's would have expired: only the release let it in.
            assert [row for row in database.read(LEASE) if row[0] == holder] == []
            deadline = time.monotonic() + 60
            while not (taken := database.read(LEASE)):
                assert time.monotonic() < deadline, "the standby never took the lease"
                time.sleep(0.05)
            [(now,)] = database.read("SELECT clock_timestamp()")
            assert taken[0][0] != holder
            assert now < held_until, f"taken over {now - held_until} after the lease expired"
        else:
            first.kill()

        deadline = time.monotonic() + 60
        while not second.probe("tracker")["leading"]:
            assert time.monotonic() < deadline, "the standby never took the lease over"
            time.sleep(0.5)
        final = on_second.wait(running, timeout=180)
        assert final == {"status": "completed", "job_id": running}
        rows = on_second.all_results(running)
        assert len(rows) == IMAGES and all(row["state"] == "done" for row in rows)
        count = f"SELECT COUNT(*) FROM results WHERE job_id = {running}"
        assert database.read(count) == [(IMAGES,)]
        newer = on_second.submit_ok(job(("RP00001", [image_server.url(f"img/red.jpg?{stop}=n")])))
        assert newer > max(running, queued)
        assert on_second.wait(newer, timeout=60)["status"] == "completed"
    finally:
        if first.process is not None and first.process.poll() is None:
            first.kill()
        second.stop()
