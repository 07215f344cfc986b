"""Hostile input and stalls against the real service: origins that lie in their headers or kill
whoever asks, bodies built to break parsers or fill the disk, racing submissions, a frozen
tracker. Each answer is a documented 2xx or 4xx (or a 503 with Retry-After), never a 5xx
otherwise, and nobody else's work is lost or held up."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from harness.client import Client, job
from harness.imageserver import ImageServer, perimeter
from harness.service import ServiceProcess, StartService

pytestmark = pytest.mark.timeout(300)

STORE = "S00339218"
KEYS = {"race": "key-race-0123456789", "cap": "key-cap-0123456789", "any": "key-any-0123456789"}
MAX_QUEUED = 2100


@pytest.fixture(scope="module")
def guarded_service(service_with: StartService) -> ServiceProcess:
    return service_with(
        "hostile",
        {
            "IMAGE_SERVICE_API_KEYS": ",".join(KEYS.values()),
            "IMAGE_SERVICE_MAX_OPEN_JOBS_PER_CLIENT": "1",
            "IMAGE_SERVICE_MAX_QUEUED_IMAGES": str(MAX_QUEUED),
            "IMAGE_SERVICE_MAX_IMAGE_ATTEMPTS": "2",
            "IMAGE_SERVICE_TRACKER_TIMEOUT": "3",
        },
    )


def as_client(service: ServiceProcess, who: str) -> Client:
    return Client(service.url, KEYS[who])


def test_an_origin_with_garbled_headers_fails_its_image_and_holds_up_nobody(
    client: Client, image_server: ImageServer
) -> None:
    garbled = [image_server.url(f"garbled/{kind}") for kind in ("redirect", "scheme", "header")]
    first = client.submit_ok(job((STORE, [*garbled, image_server.url("img/red.jpg?garbled=1")])))
    # Another client's job, submitted right after: before the fix its results were never saved.
    second = client.submit_ok(job(("RP00001", [image_server.url("img/green.png?garbled=2")])))
    assert client.wait(second, timeout=60) == {"status": "completed", "job_id": second}
    final = client.wait(first, timeout=60)
    assert final["status"] == "failed"
    rows = client.all_results(first)
    assert [r["state"] for r in rows] == ["failed", "failed", "done", "done"]
    assert rows[0]["error"] == (
        f"image download failed: {garbled[0]}: redirected to a Location that is not valid UTF-8"
    )
    # The origin's 5,000-character Location is quoted in its first 100 characters only.
    location = "ftp://a/\u00e9" + "x" * 88 + "..."
    assert rows[1]["error"] == (
        f"image download failed: {garbled[1]}: redirected to a non-http URL: {location}"
    )
    assert rows[2]["perimeter"] == rows[3]["perimeter"] == perimeter("red.jpg")
    assert final["error"] == [{"store_id": STORE, "error": rows[0]["error"]}]


HOSTILE_BODIES = {
    "lone surrogate store_id": (
        b'{"count": 1, "visits": [{"store_id": "\\ud800", "image_url": ["http://a.test/x"],'
        b' "visit_time": "2025-03-11"}]}',
        "visits[0].store_id must be printable text (no control characters or lone surrogates)",
    ),
    "lone surrogate URL": (
        b'{"count": 1, "visits": [{"store_id": "S1", "image_url": ["http://a.test/\\udcff"],'
        b' "visit_time": "2025-03-11"}]}',
        "visits[0].image_url[0] must be an absolute http(s) URL",
    ),
    "count of 5,000 digits": (
        b'{"count": ' + b"7" * 5000 + b', "visits": []}',
        "body holds a number with too many digits",
    ),
    "count past every limit": (
        b'{"count": ' + b"9" * 4000 + b', "visits": []}',
        "count must be at most 100000",
    ),
    "store_id of 100,000 characters": (
        json.dumps(job(("S" * 100_000, ["http://a.test/x"] * 500))).encode(),
        "visits[0].store_id is longer than 256 characters",
    ),
    "visit_time with a 100,000-digit fraction": (
        json.dumps(
            job(("S1", ["http://a.test/x"]), visit_time="2025-03-11T10:00:00." + "1" * 10**5)
        ).encode(),
        "visits[0].visit_time is longer than 64 characters",
    ),
    "NaN count": (b'{"count": NaN, "visits": []}', "count must be a non-negative integer"),
    "Infinity count": (
        b'{"count": -Infinity, "visits": []}',
        "count must be a non-negative integer",
    ),
    "nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, "body must be a JSON object"),
    "invalid UTF-8": (b'{"count": 1, "visits": ["\xff\xfe"]}', "body must be a JSON object"),
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_a_hostile_body_is_a_400_naming_the_field(client: Client, name: str) -> None:
    body, message = HOSTILE_BODIES[name]
    response = requests.post(f"{client.base_url}/api/submit/", data=body, timeout=60)
    assert (response.status_code, response.json()) == (400, {"error": message})


@pytest.mark.parametrize(
    "value",
    ["k" * 256, b"\xff\xfe-not-utf8", "caf\u00e9".encode("latin-1")],
)
def test_a_hostile_idempotency_key_is_a_400(client: Client, value: str | bytes) -> None:
    response = requests.post(
        f"{client.base_url}/api/submit/",
        json=job((STORE, ["http://a.test/x"])),
        headers={"Idempotency-Key": value},
        timeout=60,
    )
    assert (response.status_code, response.json()) == (
        400,
        {"error": "Idempotency-Key must be 1 to 255 visible ASCII characters"},
    )


@pytest.mark.parametrize(
    ("header", "value"),
    [("Authorization", b"Bearer \xff\xfe"), ("X-Anything", b"\xc3(\xff"), ("Cookie", b"\x80")],
)
def test_headers_that_are_not_utf8_get_a_documented_answer(
    client: Client, header: str, value: bytes
) -> None:
    for method, path in (("GET", "/api/status?jobid=1"), ("GET", "/api/jobs/1")):
        response = requests.request(
            method, client.base_url + path, headers={header: value}, timeout=60
        )
        assert response.status_code in (200, 400, 404), response.text
        assert isinstance(response.json(), dict)


def raw_exchange(client: Client, request: bytes) -> tuple[int, bytes]:
    """Send `request` as is on a new connection; the status code and body of the answer."""
    host, port = client.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_a_content_length_of_5000_digits_is_read_as_the_number_it_is(client: Client) -> None:
    # Only digits, and the HTTP parser reads its value without overflow; Python refuses to
    # turn more than 4,300 digits into an int.
    body = json.dumps(job(("NOT-IN-MASTER", ["http://a.test/x.jpg"]))).encode()
    length = b"0" * 5000 + str(len(body)).encode()
    status, answer = raw_exchange(
        client,
        b"POST /api/submit/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + length + b"\r\n\r\n" + body,
    )
    assert status == 201, answer


@pytest.mark.parametrize(
    "header",
    ["X-Request-ID", "X-Session-ID", "X-Request-Timeout-Seconds", "X-Request-Disconnect-Disabled"],
)
def test_a_header_serve_reads_itself_that_is_not_utf8_is_a_400(client: Client, header: str) -> None:
    # Serve's proxy decodes these as UTF-8 before the app sees the request (a plain 500).
    status, answer = raw_exchange(
        client,
        b"GET /api/status?jobid=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + header.encode()
        + b": \xff\xfe\r\n\r\n",
    )
    message = f"header {header.lower()} must be UTF-8 text"
    assert (status, json.loads(answer)) == (400, {"error": message})


def database_bytes(service: ServiceProcess) -> int:
    path = service.data_dir / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return sum(
        (service.data_dir / name).stat().st_size
        for name in ("jobs.sqlite3", "jobs.sqlite3-wal")
        if (service.data_dir / name).exists()
    )


@pytest.mark.parametrize(
    ("shape", "visits"),
    [
        # The shapes that cost the most per byte of body: many short URLs that all fail with a
        # message quoting them, and one image per visit with the longest store ids.
        ("short failing URLs", [(STORE, [f"/x?{i}" for i in range(2000)])]),
        ("long store ids", [("S" * 255 + f"{i % 10}", ["/img/tiny.gif"]) for i in range(300)]),
        # One origin that redirects far, repeated: its Location is quoted in every failure.
        ("one far redirect, repeated", [(STORE, ["/garbled/scheme"] * 2000)]),
    ],
)
def test_the_database_grows_at_most_20x_an_accepted_body(
    guarded_service: ServiceProcess,
    image_server: ImageServer,
    shape: str,
    visits: list[tuple[str, list[str]]],
) -> None:
    client = as_client(guarded_service, "any")
    payload = job(*((store, [image_server.url(u) for u in urls]) for store, urls in visits))
    body = json.dumps(payload).encode()
    before = database_bytes(guarded_service)
    response = client.session.post(f"{client.base_url}/api/submit/", data=body, timeout=60)
    assert response.status_code == 201, response.text
    client.wait(response.json()["job_id"], timeout=120)
    grown = database_bytes(guarded_service) - before
    print(f"{shape}: body {len(body)} bytes, database grew {grown} bytes, {grown / len(body):.1f}x")
    assert grown <= 20 * len(body)


def test_concurrent_submissions_cannot_pass_the_open_jobs_limit_together(
    guarded_service: ServiceProcess, image_server: ImageServer
) -> None:
    client = as_client(guarded_service, "race")
    payload = job(("RP00001", [image_server.url("slow/1000/red.jpg?race=1")]))

    def submit(_n: int) -> requests.Response:
        return as_client(guarded_service, "race").submit(payload)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(submit, range(20)))
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [201] + [429] * 19, [a.text for a in answers]
    [accepted] = [a.json()["job_id"] for a in answers if a.status_code == 201]
    assert client.wait(accepted, timeout=60)["status"] == "completed"


def test_a_submission_past_the_queued_images_cap_is_503_with_retry_after(
    guarded_service: ServiceProcess, image_server: ImageServer
) -> None:
    client = as_client(guarded_service, "cap")
    urls = [f"http://a.test/{i}" for i in range(MAX_QUEUED + 1)]
    refused = client.submit(job(("NOT-IN-MASTER", urls)))
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
    assert f"takes at most {MAX_QUEUED}" in refused.json()["error"]
    accepted = client.submit_ok(job(("NOT-IN-MASTER", urls[:MAX_QUEUED])))
    assert client.wait(accepted, timeout=120)["status"] == "failed"


def test_an_image_that_kills_its_worker_fails_after_the_attempt_limit_alone(
    guarded_service: ServiceProcess, image_server: ImageServer
) -> None:
    client = as_client(guarded_service, "any")
    deadly = image_server.url("deadly?kill=1")
    others = [image_server.url(f"img/green.png?kill={i}") for i in range(20)]
    job_id = client.submit_ok(job(("RP00003", [others[0], deadly, *others[1:]])))
    final = client.wait(job_id, timeout=180)
    message = "the image worker died while processing this image, 2 times"
    assert final == {
        "status": "failed",
        "job_id": job_id,
        "error": [{"store_id": "RP00003", "error": message}],
    }
    rows = client.all_results(job_id)
    assert [r["state"] for r in rows] == ["done", "failed", *["done"] * 19]
    # Each death is one request or more (a connection cut before the answer is retried).
    assert image_server.hits["/deadly?kill=1"] >= 2


def test_a_failing_flush_loses_nothing_and_the_loop_goes_on(
    guarded_service: ServiceProcess, image_server: ImageServer
) -> None:
    client = as_client(guarded_service, "any")
    with sqlite3.connect(guarded_service.data_dir / "jobs.sqlite3") as db:
        # Stands in for a disk that refuses writes for a while: every result insert fails.
        db.execute(
            "CREATE TRIGGER refuse_results BEFORE INSERT ON results"
            " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    db.close()
    try:
        job_id = client.submit_ok(
            job(("RP00004", [image_server.url(f"img/tiny.gif?flush={i}") for i in range(10)]))
        )
        time.sleep(3)
        assert client.status(job_id).json()["status"] == "ongoing"
    finally:
        with sqlite3.connect(guarded_service.data_dir / "jobs.sqlite3") as db:
            db.execute("DROP TRIGGER refuse_results")
        db.close()
    assert client.wait(job_id, timeout=60)["status"] == "completed"
    assert [r["state"] for r in client.all_results(job_id)] == ["done"] * 10


# What the tracker logs when loading the unfinished jobs fails (actors/tracker.py, _recover).
RELOAD_FAILED = "recovering the unfinished jobs failed; trying again"


def reload_failures(service: ServiceProcess, tracker_pid: int) -> list[str]:
    """The tracebacks of the reloads the tracker process `tracker_pid` logged as failed."""
    failures = []
    for line in service.ray_log(tracker_pid).splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("message") == RELOAD_FAILED:
                failures.append(str(record.get("exception")))
    return failures


def test_a_failing_recovery_is_retried_not_kept_as_the_answer(
    guarded_service: ServiceProcess, image_server: ImageServer
) -> None:
    client = as_client(guarded_service, "any")
    urls = [image_server.url(f"slow/1000/tiny.gif?recover={i}") for i in range(200)]
    job_id = client.submit_ok(job(("RP00006", urls)))
    deadline = time.monotonic() + 60
    while not (done := [r for r in client.all_results(job_id) if r["state"] == "done"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    first = urls.index(done[0]["image_url"])
    database = guarded_service.data_dir / "jobs.sqlite3"

    def move_result(source: int, target: int) -> None:
        with sqlite3.connect(database) as db:
            db.execute(
                "UPDATE results SET idx = ? WHERE job_id = ? AND idx = ?", (target, job_id, source)
            )
        db.close()

    # A result naming an image the job does not have: the restarted tracker cannot load the job.
    killed = int(guarded_service.probe("tracker")["pid"])
    move_result(first, 10**6)
    try:
        os.kill(killed, signal.SIGKILL)
        restarted = int(guarded_service.probe("tracker")["pid"])  # waits out the restart
        assert restarted != killed
        # Struck in the reload: the restarted tracker says it failed there, on that row, and
        # tries again (twice seen); the service is unhealthy meanwhile, not for another reason.
        deadline = time.monotonic() + 60
        while len(failures := reload_failures(guarded_service, restarted)) < 2:
            assert time.monotonic() < deadline, "the restarted tracker never failed its reload"
            time.sleep(0.2)
        assert all("IndexError" in failure for failure in failures), failures[0]
        health = requests.get(f"{client.base_url}/healthz", timeout=60)
        assert (health.status_code, health.json()) == (503, {"status": "unavailable"})
        assert "Retry-After" in health.headers
    finally:
        move_result(10**6, first)
    assert client.wait(job_id, timeout=120)["status"] == "completed"
    rows = client.all_results(job_id)
    assert [r["state"] for r in rows] == ["done"] * 200


def finished_job(
    service: ServiceProcess, image_server: ImageServer, tag: str
) -> tuple[Client, int]:
    """A client with the key "any" and a one-image job of its that has ended."""
    client = as_client(service, "any")
    job_id = client.submit_ok(job(("RP00007", [image_server.url(f"img/tiny.gif?{tag}=1")])))
    client.wait(job_id, timeout=60)
    return client, job_id


def test_status_is_answered_where_http_ends_even_with_the_api_replica_frozen(
    guarded_service: ServiceProcess, image_server: ImageServer
) -> None:
    client, job_id = finished_job(guarded_service, image_server, "edge")
    [replica] = guarded_service.pids_of("serve replica")
    os.kill(replica, signal.SIGSTOP)
    try:
        answer = client.session.get(
            f"{client.base_url}/api/status", params={"jobid": job_id}, timeout=10
        )
        assert answer.content == f'{{"status":"completed","job_id":{job_id}}}'.encode()
        assert answer.headers["x-request-id"]
        # Another client's job is the API's to answer (400 {}), not the edge's: it waits.
        with pytest.raises(requests.Timeout):
            as_client(guarded_service, "race").session.get(
                f"{client.base_url}/api/status", params={"jobid": job_id}, timeout=2
            )
    finally:
        os.kill(replica, signal.SIGCONT)
    other = as_client(guarded_service, "race").status(job_id)
    assert (other.status_code, other.json()) == (400, {})


def test_a_frozen_tracker_is_503_with_retry_after_on_every_route_then_recovers(
    guarded_service: ServiceProcess, image_server: ImageServer
) -> None:
    # Last in this module: it freezes the tracker of the module's service.
    client, job_id = finished_job(guarded_service, image_server, "frozen")
    tracker_pid = int(guarded_service.probe("tracker")["pid"])
    calls: list[tuple[str, str, Any]] = [
        ("GET", f"/api/results?jobid={job_id}", None),
        ("GET", f"/api/jobs/{job_id}", None),
        ("GET", "/api/jobs", None),
        ("POST", f"/api/jobs/{job_id}/cancel", None),
        ("POST", "/api/submit/", job(("RP00005", [image_server.url("img/red.jpg?frozen=2")]))),
    ]
    os.kill(tracker_pid, signal.SIGSTOP)
    try:
        for method, path, body in calls:
            started = time.monotonic()
            response = client.session.request(method, client.base_url + path, json=body, timeout=60)
            assert response.status_code == 503, (path, response.status_code, response.text)
            assert response.json() == {"error": "the job tracker is not answering; please retry"}
            assert int(response.headers["Retry-After"]) >= 1
            assert time.monotonic() - started < 10
        # Status is read from the database beside the tracker: it still answers.
        assert client.status(job_id).json() == {"status": "completed", "job_id": job_id}
    finally:
        os.kill(tracker_pid, signal.SIGCONT)
    assert client.session.get(f"{client.base_url}/api/jobs/{job_id}", timeout=60).status_code == 200
