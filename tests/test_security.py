"""API keys, per-client isolation and limits, and the SSRF guard, end to end on a service with
keys on and the address guard on (only the host name `localhost` is allowed, for the image
server; its address 127.0.0.1 stays refused)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from harness.client import Client, job
from harness.imageserver import ImageServer
from harness.service import ServiceProcess, StartService

pytestmark = pytest.mark.timeout(300)

KEYS = {
    "a": "key-alpha-0123456789",
    "b": "key-bravo-0123456789",
    "c": "key-charlie-0123456789",
    "d": "key-delta-0123456789",
    "e": "key-echo-0123456789",
    "f": "key-foxtrot-0123456789",
    "g": "key-golf-0123456789",
}


@pytest.fixture(scope="module")
def secure_service(service_with: StartService) -> ServiceProcess:
    return service_with(
        "secure",
        {
            "IMAGE_SERVICE_API_KEYS": ",".join(KEYS.values()),
            "IMAGE_SERVICE_SUBMIT_RATE": "0.2",
            "IMAGE_SERVICE_SUBMIT_BURST": "4",
            "IMAGE_SERVICE_MAX_OPEN_JOBS_PER_CLIENT": "2",
            "IMAGE_SERVICE_ALLOW_PRIVATE_URLS": "0",
            "IMAGE_SERVICE_ALLOWED_HOSTS": "localhost",
        },
    )


def as_client(service: ServiceProcess, who: str) -> Client:
    return Client(service.url, KEYS[who])


def test_every_api_call_needs_a_valid_key(secure_service: ServiceProcess) -> None:
    url = secure_service.url
    calls = [
        ("post", "/api/submit/"),
        ("get", "/api/status?jobid=1"),
        ("get", "/api/results?jobid=1"),
        ("get", "/api/jobs"),
        ("get", "/api/jobs/1"),
        ("post", "/api/jobs/1/cancel"),
    ]
    for method, path in calls:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEYS["a"]}):
            response = requests.request(method, url + path, headers=headers, json={}, timeout=30)
            assert response.status_code == 401, (path, headers)
            assert response.json() == {"error": "missing or invalid API key"}
            assert response.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200


def test_a_client_sees_only_its_own_jobs(
    secure_service: ServiceProcess, image_server: ImageServer
) -> None:
    alpha, bravo = as_client(secure_service, "a"), as_client(secure_service, "b")
    job_id = alpha.submit_ok(job(("NOT-IN-MASTER", [f"http://localhost:{image_server.port}/x"])))
    assert alpha.status(job_id).json()["job_id"] == job_id
    other = bravo.status(job_id)
    assert (other.status_code, other.content) == (400, b"{}")
    other_results = bravo.session.get(
        f"{secure_service.url}/api/results", params={"jobid": job_id}, timeout=30
    )
    assert (other_results.status_code, other_results.json()) == (400, {})


def test_open_jobs_per_client_are_limited(
    secure_service: ServiceProcess, image_server: ImageServer
) -> None:
    alpha = as_client(secure_service, "a")
    slow = job(("RP00001", [f"http://localhost:{image_server.port}/silent/x.png"]))
    first, second = alpha.submit_ok(slow), alpha.submit_ok(slow)
    refused = alpha.submit(slow)
    assert refused.status_code == 429
    assert refused.json()["error"].startswith("too many open jobs")
    assert {alpha.wait(first)["status"], alpha.wait(second)["status"]} == {"failed"}


def test_submissions_are_rate_limited_per_client(
    secure_service: ServiceProcess, image_server: ImageServer
) -> None:
    bravo, charlie = as_client(secure_service, "b"), as_client(secure_service, "c")
    done = job(("NOT-IN-MASTER", [f"http://localhost:{image_server.port}/y"]))
    answers = [bravo.submit(done).status_code for _ in range(5)]
    assert answers == [201, 201, 201, 201, 429]
    limited = bravo.submit(done)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert "retry in" in limited.json()["error"]
    assert charlie.submit(done).status_code == 201  # another client is not affected


def test_ssrf_guard_refuses_loopback_and_redirects_to_it(
    secure_service: ServiceProcess, image_server: ImageServer
) -> None:
    charlie = as_client(secure_service, "c")
    port = image_server.port
    loopback_target = f"http://127.0.0.1:{port}/img/blue.webp?ssrf-redirected"
    payload = job(
        ("RP00001", [f"http://127.0.0.1:{port}/img/red.jpg?ssrf-v4"]),
        ("RP00002", [f"http://[::1]:{port}/img/red.jpg?ssrf-v6"]),
        ("RP00003", [f"http://localhost:{port}/goto?to={loopback_target}"]),
        ("RP00004", [f"http://localhost:{port}/img/green.png?ssrf-allowed"]),
    )
    job_id = charlie.submit_ok(payload)
    final = charlie.wait(job_id)
    reasons = {entry["store_id"]: entry["error"] for entry in final["error"]}
    assert set(reasons) == {"RP00001", "RP00002", "RP00003"}
    assert all("refused" in reason for reason in reasons.values())
    rows = charlie.all_results(job_id)
    assert rows[3]["state"] == "done" and rows[3]["perimeter"] == 1000
    assert image_server.hits["/img/red.jpg?ssrf-v4"] == 0
    assert image_server.hits["/img/blue.webp?ssrf-redirected"] == 0


def test_a_callback_to_a_refused_address_is_never_called(
    secure_service: ServiceProcess, image_server: ImageServer
) -> None:
    # Callbacks go through the image URLs' address guard. Broken by a tracker whose callback
    # sender lets private addresses through: the image server would see the refused POST.
    golf = as_client(secure_service, "g")
    refused, allowed = uuid.uuid4().hex, uuid.uuid4().hex
    hooks = {
        refused: f"http://127.0.0.1:{image_server.port}/callback/0/{refused}",
        allowed: f"http://localhost:{image_server.port}/callback/0/{allowed}",  # named: allowed
    }
    image = f"http://localhost:{image_server.port}/img/tiny.gif?callback-guard"
    jobs = {
        key: golf.submit_ok({**job(("RP00001", [image])), "callback_url": url})
        for key, url in hooks.items()
    }
    finals = {key: golf.wait(job_id) for key, job_id in jobs.items()}
    # Both deliveries are over (delivered or given up on) once the database says so.
    ended = f"SELECT COUNT(*) FROM jobs WHERE id IN {tuple(jobs.values())}"
    deadline = time.monotonic() + 60
    while secure_service.database().read(f"{ended} AND callback_done_at IS NOT NULL") != [(2,)]:
        assert time.monotonic() < deadline, "the callbacks were never sent"
        time.sleep(0.2)
    assert image_server.callbacks[allowed] == [finals[allowed]]
    assert refused not in image_server.callbacks
    assert image_server.hits[f"/callback/0/{refused}"] == 0


def test_logs_hold_no_key_and_no_query_string(secure_service: ServiceProcess) -> None:
    logs = "".join(
        path.read_text(errors="replace") for path in secure_service.data_dir.glob("*.log")
    )
    assert logs, "the service wrote no log at all"
    assert not any(key in logs for key in KEYS.values())
    assert "ssrf-v4" not in logs


def test_job_control_is_per_client_too(
    secure_service: ServiceProcess, image_server: ImageServer
) -> None:
    delta, echo = as_client(secure_service, "d"), as_client(secure_service, "e")
    url = f"http://localhost:{image_server.port}/x"
    job_id = delta.submit_ok(job(("NOT-IN-MASTER", [url])))
    base = secure_service.url
    assert delta.session.get(f"{base}/api/jobs/{job_id}", timeout=30).status_code == 200
    for response in (
        echo.session.get(f"{base}/api/jobs/{job_id}", timeout=30),
        echo.session.post(f"{base}/api/jobs/{job_id}/cancel", timeout=30),
    ):
        assert (response.status_code, response.json()) == (404, {"error": f"no job {job_id}"})
    listed = echo.session.get(f"{base}/api/jobs", params={"limit": 1000}, timeout=30).json()
    assert job_id not in [j["job_id"] for j in listed["jobs"]]
    mine = delta.session.get(f"{base}/api/jobs", timeout=30).json()
    assert [j["job_id"] for j in mine["jobs"]] == [job_id] and mine["total"] == 1
    # One client's Idempotency-Key never finds another client's job.
    body = job(("NOT-IN-MASTER", [url]))
    headers = {"Idempotency-Key": "shared-key"}
    first = delta.session.post(f"{base}/api/submit/", json=body, headers=headers, timeout=30)
    second = echo.session.post(f"{base}/api/submit/", json=body, headers=headers, timeout=30)
    assert first.status_code == second.status_code == 201
    assert first.json() != second.json()


def test_cli_sends_its_api_key(secure_service: ServiceProcess) -> None:
    imgjobs = str(Path(sys.executable).with_name("imgjobs"))
    environment = {**os.environ, "IMAGE_SERVICE_URL": secure_service.url}
    environment.pop("IMAGE_SERVICE_API_KEY", None)
    refused = subprocess.run(
        [imgjobs, "jobs"], capture_output=True, text=True, timeout=60, env=environment
    )
    assert refused.returncode == 2
    assert refused.stderr == "imgjobs: error: missing or invalid API key (HTTP 401)\n"
    allowed = subprocess.run(
        [imgjobs, "--api-key", KEYS["d"], "jobs"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.startswith("JOB  STATUS")


def test_a_repeated_key_answers_even_at_the_open_jobs_limit(
    secure_service: ServiceProcess, image_server: ImageServer
) -> None:
    foxtrot = as_client(secure_service, "f")
    slow = job(("RP00001", [f"http://localhost:{image_server.port}/silent/f.png"]))
    submit = f"{secure_service.url}/api/submit/"
    first, second = (
        foxtrot.session.post(submit, json=slow, headers={"Idempotency-Key": key}, timeout=30)
        for key in ("f-1", "f-2")
    )
    assert first.status_code == second.status_code == 201
    replay = foxtrot.session.post(submit, json=slow, headers={"Idempotency-Key": "f-1"}, timeout=30)
    assert (replay.status_code, replay.json()) == (201, first.json())
    assert foxtrot.status(first.json()["job_id"]).json()["status"] == "ongoing"
