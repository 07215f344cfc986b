"""Job control beside the spec's contract: /api/jobs, cancellation, Idempotency-Key, callbacks,
and the metrics on Ray's Prometheus endpoint. Real service, real image server, loopback only."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import datetime
from typing import Any

import pytest
import requests

from core.models import IMAGE_CANCELLED, JOB_CANCELLED
from harness.client import Client, job
from harness.imageserver import ImageServer
from harness.service import ServiceProcess
from harness.stores import ON_BOTH_BACKENDS

# The whole API suite runs on services of each job store.
pytestmark = [ON_BOTH_BACKENDS, pytest.mark.usefixtures("fresh_image_counts")]

STORE = "S00339218"
OTHER_STORE = "S01408764"


def detail(client: Client, job_id: int | str) -> requests.Response:
    return client.session.get(f"{client.base_url}/api/jobs/{job_id}", timeout=30)


def cancel(client: Client, job_id: int | str) -> requests.Response:
    return client.session.post(f"{client.base_url}/api/jobs/{job_id}/cancel", timeout=60)


def submit_with_key(client: Client, payload: Any, key: str) -> requests.Response:
    return client.session.post(
        f"{client.base_url}/api/submit/",
        json=payload,
        headers={"Idempotency-Key": key},
        timeout=60,
    )


def wait_for(predicate: Any, timeout: float = 60, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not true within {timeout} s")


def test_job_detail_of_a_finished_job_counts_every_image(
    client: Client, image_server: ImageServer
) -> None:
    urls = [image_server.url("img/green.png")] * 5 + [image_server.url("status/404")]
    job_id = client.submit_ok(job((STORE, urls[:3]), (OTHER_STORE, urls[3:])))
    client.wait(job_id)
    response = detail(client, job_id)
    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in ("job_id", "status", "total", "done", "failed")} == {
        "job_id": job_id,
        "status": "failed",
        "total": 6,
        "done": 5,
        "failed": 1,
    }
    assert (body["in_flight"], body["queued"], body["cancelled_at"]) == (0, 0, None)
    times = [datetime.fromisoformat(body[k]) for k in ("created_at", "started_at", "finished_at")]
    assert times == sorted(times)
    assert [e["store_id"] for e in body["errors"]] == [OTHER_STORE]


def test_job_detail_of_an_unknown_or_malformed_id_is_404(client: Client) -> None:
    for job_id in ("99999999", "abc", "-1"):
        response = detail(client, job_id)
        assert response.status_code == 404
        assert response.json() == {"error": f"no job {job_id}"}


def test_job_list_is_newest_first_and_pages(client: Client, image_server: ImageServer) -> None:
    ids = [client.submit_ok(job((STORE, [image_server.url("img/tiny.gif")]))) for _ in range(3)]
    first = client.session.get(f"{client.base_url}/api/jobs", params={"limit": 2}, timeout=30)
    assert first.status_code == 200
    page = first.json()
    assert [j["job_id"] for j in page["jobs"]] == ids[::-1][:2]
    assert page["total"] >= 3 and page["next_offset"] == 2
    second = client.session.get(
        f"{client.base_url}/api/jobs", params={"limit": 2, "offset": 2}, timeout=30
    ).json()
    assert second["jobs"][0]["job_id"] == ids[0]
    bad = client.session.get(f"{client.base_url}/api/jobs", params={"limit": 0}, timeout=30)
    assert bad.status_code == 400 and "limit" in bad.json()["error"]


def test_cancel_mid_job_drops_queued_images_and_ends_the_job_failed(
    client: Client, image_server: ImageServer
) -> None:
    key = uuid.uuid4().hex[:8]
    urls = [image_server.url(f"slow/300/green.png?{key}-{i}") for i in range(400)]
    job_id = client.submit_ok(job((STORE, urls[:200]), (OTHER_STORE, urls[200:])))
    wait_for(lambda: detail(client, job_id).json()["done"] > 0)
    response = cancel(client, job_id)
    assert response.status_code == 202
    assert response.json()["status"] in ("cancelling", "cancelled")
    assert response.json()["queued"] == 0

    status = client.wait(job_id)
    assert status == {
        "status": "failed",
        "job_id": job_id,
        "error": [
            {"store_id": STORE, "error": JOB_CANCELLED},
            {"store_id": OTHER_STORE, "error": JOB_CANCELLED},
        ],
    }
    body = detail(client, job_id).json()
    assert body["status"] == "cancelled" and body["cancelled_at"] and body["finished_at"]
    assert body["done"] + body["failed"] == 400 and body["in_flight"] == body["queued"] == 0
    rows = client.all_results(job_id)
    cancelled = [row for row in rows if row.get("error") == IMAGE_CANCELLED]
    measured = [row for row in rows if row["state"] == "done"]
    assert len(cancelled) + len(measured) == 400 and len(cancelled) == body["failed"]
    downloaded = {path for path in image_server.hits if key in path}
    assert len(downloaded) == len(measured) < 400  # nothing was fetched after the cancel

    again = cancel(client, job_id)
    assert again.status_code == 202 and again.json()["status"] == "cancelled"


def test_cancel_of_a_finished_or_unknown_job(client: Client, image_server: ImageServer) -> None:
    job_id = client.submit_ok(job((STORE, [image_server.url("img/tiny.gif")])))
    client.wait(job_id)
    finished = cancel(client, job_id)
    assert finished.status_code == 409
    assert finished.json() == {"error": f"job {job_id} has already completed"}
    assert client.status(job_id).json() == {"status": "completed", "job_id": job_id}
    assert cancel(client, 99999999).status_code == 404


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(
    client: Client, image_server: ImageServer
) -> None:
    url = image_server.url("img/red.jpg")
    payload = job((STORE, [url]))
    key = f"order-{uuid.uuid4()}"
    first = submit_with_key(client, payload, key)
    jobs_before = client.session.get(f"{client.base_url}/api/jobs", timeout=30).json()["total"]
    # The same body with other spacing and key order is the same submission.
    replay = client.session.post(
        f"{client.base_url}/api/submit/",
        data=json.dumps(
            {"visits": [{"visit_time": "2025-03-11", "image_url": [url], "store_id": STORE}]},
            indent=3,
        ).replace("{", '{"count": 1, ', 1),
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
        timeout=60,
    )
    assert first.status_code == replay.status_code == 201
    assert first.json() == replay.json()
    jobs_after = client.session.get(f"{client.base_url}/api/jobs", timeout=30).json()["total"]
    assert jobs_after == jobs_before

    other = submit_with_key(client, job((OTHER_STORE, [image_server.url("img/red.jpg")])), key)
    assert other.status_code == 409
    assert other.json() == {
        "error": f"this Idempotency-Key was used for job {first.json()['job_id']}"
        " with a different body"
    }
    fresh = submit_with_key(client, payload, f"order-{uuid.uuid4()}")
    assert fresh.status_code == 201 and fresh.json() != first.json()


def test_malformed_idempotency_key_is_400(client: Client, image_server: ImageServer) -> None:
    payload = job((STORE, [image_server.url("img/red.jpg")]))
    for key in ("x" * 256, "two words"):
        response = submit_with_key(client, payload, key)
        assert response.status_code == 400
        assert "Idempotency-Key" in response.json()["error"]


def test_callback_receives_the_final_status_once_after_retries(
    client: Client, image_server: ImageServer
) -> None:
    key = uuid.uuid4().hex
    payload = {
        **job((STORE, [image_server.url("img/red.jpg"), image_server.url("status/404")])),
        "callback_url": image_server.url(f"callback/2/{key}"),
    }
    job_id = client.submit_ok(payload)
    final = client.wait(job_id)
    received = wait_for(lambda: image_server.callbacks.get(key))
    time.sleep(0.5)  # a second delivery would arrive within this
    assert image_server.callbacks[key] == received == [final]
    assert final["status"] == "failed" and final["error"][0]["store_id"] == STORE
    assert image_server.hits[f"/callback/2/{key}"] == 3  # two 503 answers, then delivered


def test_undeliverable_callback_never_fails_the_job(
    client: Client, image_server: ImageServer
) -> None:
    payload = {
        **job((STORE, [image_server.url("img/red.jpg")])),
        "callback_url": image_server.url("nowhere/callback"),  # answers 404: not retried
    }
    job_id = client.submit_ok(payload)
    assert client.wait(job_id) == {"status": "completed", "job_id": job_id}
    wait_for(lambda: image_server.hits["/nowhere/callback"] == 1)


def test_bad_callback_url_is_400_naming_the_field(client: Client) -> None:
    payload = {**job((STORE, ["http://example.com/a.jpg"])), "callback_url": "ftp://x/y"}
    response = client.submit(payload)
    assert response.status_code == 400
    assert response.json() == {"error": "callback_url must be an absolute http(s) URL"}


def metric_values(text: str, name: str) -> dict[str, float]:
    """Sample values of one metric by its label set (`reason="download"`, `le="0.5"`, ...)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(rf"{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match:
            labels = ",".join(
                part
                for part in re.findall(r'\w+="[^"]*"', match.group(1) or "")
                if part.split("=")[0] in ("reason", "state", "le")
            )
            values[labels] = values.get(labels, 0.0) + float(match.group(2))
    return values


def test_metrics_reach_the_prometheus_endpoint(
    client: Client, service: ServiceProcess, image_server: ImageServer
) -> None:
    urls = [image_server.url("img/blue.webp")] * 4 + [image_server.url("img/page.jpg")]
    job_id = client.submit_ok(job((STORE, urls), ("NOT-A-STORE", urls[:1])))
    assert client.wait(job_id)["status"] == "failed"
    endpoint = f"http://127.0.0.1:{service.metrics_port}/metrics"

    def scraped() -> str | None:
        text = requests.get(endpoint, timeout=10).text
        failed = metric_values(text, "ray_image_service_images_failed_total")
        ready = failed.get('reason="not_an_image"') and failed.get('reason="unknown_store"')
        return text if ready else None

    text = wait_for(scraped, timeout=90, every=2)
    assert metric_values(text, "ray_image_service_images_processed_total")[""] >= 4
    assert metric_values(text, "ray_image_service_download_seconds_count")[""] >= 5
    assert metric_values(text, "ray_image_service_processing_seconds_count")[""] >= 5
    assert 'state="failed"' in metric_values(text, "ray_image_service_jobs")
    for gauge in ("ray_image_service_images_in_flight", "ray_image_service_queue_depth"):
        assert "" in metric_values(text, gauge)


def labelled_sum(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s lines (every worker process has its own) that carry `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_status_answered_at_the_edge_is_counted_by_ours_and_not_by_serve(
    client: Client, service: ServiceProcess, image_server: ImageServer, backend: str
) -> None:
    """FastStatus answers a known job's status in the proxy, before Serve's request handling
    (with SQLite, the proxy on the head node reads the file beside it): our request counter
    sees those answers and the header guard's 400s; Serve's own never does."""
    if backend != "sqlite":
        pytest.skip("on PostgreSQL the edge answers too; SQLite is enough to show the gap")
    job_id = client.submit_ok(job((STORE, [image_server.url("img/blue.webp")])))
    client.wait(job_id)
    endpoint = f"http://127.0.0.1:{service.metrics_port}/metrics"
    ours = "ray_image_service_http_requests_total"
    serves = "ray_serve_num_http_requests_total"

    def counts() -> tuple[float, float, float]:
        text = requests.get(endpoint, timeout=10).text
        return (
            labelled_sum(text, ours, route="/api/status", code="200"),
            labelled_sum(text, ours, route="/api/status", code="400"),
            labelled_sum(text, serves, route="/api/status"),
        )

    def settled(least: tuple[float, float]) -> tuple[float, float, float] | None:
        now = counts()
        return now if now[0] >= least[0] and now[1] >= least[1] else None

    # Ray exports every few seconds: start from what it shows once it has shown the polls.
    before = wait_for(lambda: settled((1, 0)), timeout=60, every=2)
    for _ in range(20):
        assert client.status(job_id).status_code == 200
    bad = requests.get(
        f"{client.base_url}/api/status",
        params={"jobid": job_id},
        headers={"X-Request-ID": b"\xff"},  # type: ignore[dict-item]
        timeout=10,
    )
    assert bad.status_code == 400
    after = wait_for(lambda: settled((before[0] + 20, before[1] + 1)), timeout=60, every=2)
    assert after[2] == before[2], f"Serve counted edge answers: {before} -> {after}"
    # A status the edge leaves to the API (an unknown job) is Serve's to count, and ours.
    assert client.status(job_id + 1000).status_code == 400  # the contract: unknown is 400 {}
    wait_for(lambda: counts()[2] > after[2] or None, timeout=60, every=2)
