"""`make soak`: 32 clients on loopback submit small jobs and poll them for 60 s while a
20,000-image job runs; some submit twice with one Idempotency-Key, some cancel their job at
once, some send hostile bodies, and a tenth of the images come from an origin whose headers
are not UTF-8. Passes when no answer was a 5xx, every hostile body was a 400, a repeated key
always gave the same job, every job reached a final status and holds exactly one result per
image, and its progress counts add up. Bounded in time; stops by itself."""

from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import requests

from bench.jobs import child, wait_http
from bench.run import IMAGE_COUNT, make_job
from harness.imageserver import ImageServer
from harness.service import ServiceProcess, free_port

CLIENTS = 32
SECONDS = 60
FINAL_WAIT_SECONDS = 300
REPEAT_SHARE = 0.2  # submissions sent twice with one Idempotency-Key
CANCEL_SHARE = 0.1  # jobs cancelled right after they are submitted
HOSTILE_SHARE = 0.1  # submissions that are hostile bodies, each to be answered 400
GARBLED_SHARE = 0.1  # images from an origin whose header bytes are not UTF-8
HOSTILE_BODIES = [
    b'{"count": 1, "visits": [{"store_id": "\\ud800", "image_url": ["http://a.test/x"],'
    b' "visit_time": "2025-03-11"}]}',
    b'{"count": 1, "visits": [{"store_id": "S1", "image_url": ["http://a.test/\\udcff"],'
    b' "visit_time": "2025-03-11"}]}',
    b'{"count": ' + b"7" * 5000 + b', "visits": []}',
    b'{"count": NaN, "visits": []}',
    b"[" * 50_000 + b"]" * 50_000,
    b'{"count": 1, "visits": [{"store_id": "'
    + b"S" * 100_000
    + b'", "image_url": ["http://a.test/x"],'
    b' "visit_time": "2025-03-11"}]}',
    b'{"count": 1, "visits": [{"store_id": "S1", "image_url": ["http://a.test/x"],'
    b' "visit_time": "2025-03-11T10:00:00.' + b"1" * 100_000 + b'"}]}',
]


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: Counter[int] = Counter()
        self.jobs: dict[int, int] = {}  # job id -> images submitted
        self.problems: list[str] = []

    def answer(self, response: requests.Response) -> requests.Response:
        with self.lock:
            self.codes[response.status_code] += 1
        return response


def image_url(rng: random.Random, image_port: int, garbled_port: int) -> str:
    draw = rng.random()
    if draw < GARBLED_SHARE:
        return f"http://127.0.0.1:{garbled_port}/garbled/{rng.choice(['redirect', 'header'])}"
    if draw < GARBLED_SHARE + 0.1:
        return f"http://127.0.0.1:{image_port}/img/missing.png"
    return f"http://127.0.0.1:{image_port}/img/{rng.randrange(IMAGE_COUNT)}.jpeg"


def small_job(rng: random.Random, image_port: int, garbled_port: int) -> dict[str, Any]:
    visits = []
    for _ in range(rng.randint(1, 3)):
        urls = [image_url(rng, image_port, garbled_port) for _ in range(rng.randint(1, 5))]
        store = f"RP{rng.randint(1, 1000):05d}" if rng.random() > 0.1 else "NOT-IN-MASTER"
        visits.append({"store_id": store, "image_url": urls, "visit_time": "2025-03-11"})
    return {"count": len(visits), "visits": visits}


def client_loop(seed: int, url: str, ports: tuple[int, int], tally: Tally, deadline: float) -> None:
    rng = random.Random(seed)
    session = requests.Session()
    submit = f"{url}/api/submit/"
    while time.monotonic() < deadline:
        if rng.random() < HOSTILE_SHARE:
            hostile = tally.answer(
                session.post(submit, data=rng.choice(HOSTILE_BODIES), timeout=60)
            )
            if hostile.status_code != 400 or list(hostile.json()) != ["error"]:
                with tally.lock:
                    tally.problems.append(f"hostile body answered {hostile.status_code}")
            continue
        payload = small_job(rng, *ports)
        repeat = rng.random() < REPEAT_SHARE
        headers = {"Idempotency-Key": uuid.uuid4().hex} if repeat else {}
        response = tally.answer(session.post(submit, json=payload, headers=headers, timeout=60))
        if response.status_code != 201:
            continue
        job_id = response.json()["job_id"]
        with tally.lock:
            tally.jobs[job_id] = sum(len(v["image_url"]) for v in payload["visits"])
        if repeat:
            again = tally.answer(session.post(submit, json=payload, headers=headers, timeout=60))
            if again.status_code != 201 or again.json()["job_id"] != job_id:
                with tally.lock:
                    tally.problems.append(f"job {job_id}: key repeated, got {again.text}")
        if rng.random() < CANCEL_SHARE:
            tally.answer(session.post(f"{url}/api/jobs/{job_id}/cancel", timeout=60))
        while time.monotonic() < deadline:
            if rng.random() < 0.5:
                status = session.get(f"{url}/api/status", params={"jobid": job_id}, timeout=60)
            else:
                status = session.get(f"{url}/api/jobs/{job_id}", timeout=60)
            tally.answer(status)
            if status.status_code == 200 and status.json()["status"] not in (
                "ongoing",
                "cancelling",
            ):
                break
            time.sleep(0.2)


def check_jobs(url: str, jobs: dict[int, int], tally: Tally) -> list[str]:
    problems = []
    deadline = time.monotonic() + FINAL_WAIT_SECONDS
    for job_id, images in sorted(jobs.items()):
        while True:
            body = tally.answer(requests.get(f"{url}/api/status", params={"jobid": job_id})).json()
            if body["status"] != "ongoing":
                break
            if time.monotonic() > deadline:
                problems.append(f"job {job_id} still ongoing")
                break
            time.sleep(0.5)
        rows: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            page = tally.answer(
                requests.get(
                    f"{url}/api/results", params={"jobid": job_id, "offset": offset, "limit": 1000}
                )
            ).json()
            rows.extend(page["results"])
            offset = page["next_offset"]
        settled = [row for row in rows if row["state"] != "pending"]
        if len(rows) != images or len(settled) != images:
            problems.append(
                f"job {job_id}: {len(settled)} settled of {len(rows)} rows, {images} sent"
            )
        detail = tally.answer(requests.get(f"{url}/api/jobs/{job_id}")).json()
        counted = (detail["total"], detail["done"] + detail["failed"], detail["in_flight"])
        if counted != (images, images, 0):
            problems.append(f"job {job_id}: progress (total, settled, in flight) = {counted}")
    return problems


def main() -> None:
    image_port = free_port()
    garbled_origin = ImageServer().start()
    with (
        tempfile.TemporaryDirectory() as tmp,
        child("bench.imagehost", str(image_port), str(IMAGE_COUNT)),
    ):
        wait_http(f"http://127.0.0.1:{image_port}/img/0.jpeg")
        service = ServiceProcess(
            Path(tmp) / "soak",
            env_overrides={
                "IMAGE_SERVICE_GPU_DELAY": "0.1-0.4",
                "IMAGE_SERVICE_CONCURRENCY": "128",
            },
        ).start()
        try:
            tally = Tally()
            big = requests.post(
                f"{service.url}/api/submit/", json=make_job(image_port, 20_000), timeout=120
            )
            tally.answer(big)
            tally.jobs[big.json()["job_id"]] = 20_000
            deadline = time.monotonic() + SECONDS
            threads = [
                threading.Thread(
                    target=client_loop,
                    args=(n, service.url, (image_port, garbled_origin.port), tally, deadline),
                )
                for n in range(CLIENTS)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            problems = tally.problems + check_jobs(service.url, dict(tally.jobs), tally)
        finally:
            service.stop()
            garbled_origin.stop()
    errors = sum(n for code, n in tally.codes.items() if code >= 500)
    requests_made = sum(tally.codes.values())
    print(
        f"soak: {CLIENTS} clients, {SECONDS} s, {requests_made} requests, {len(tally.jobs)} jobs,"
    )
    print(f"  answers by code {dict(sorted(tally.codes.items()))}, 5xx: {errors}")
    print(f"  jobs with a problem: {len(problems)}")
    for problem in problems[:20]:
        print("  ", problem)
    if errors or problems:
        sys.exit(1)
    print("soak passed")


if __name__ == "__main__":
    main()
