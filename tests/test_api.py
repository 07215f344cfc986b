"""The public contract end to end: real Serve app over HTTP, real Ray, real image server."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from harness.client import Client, job
from harness.imageserver import ImageServer, perimeter
from harness.stores import ON_BOTH_BACKENDS

# The whole API suite runs on services of each job store.
pytestmark = [ON_BOTH_BACKENDS, pytest.mark.usefixtures("fresh_image_counts")]

STORE = "S00339218"
OTHER_STORE = "S01408764"
VALID_VISIT = {
    "store_id": STORE,
    "image_url": ["http://example.com/a.jpg"],
    "visit_time": "2025-03-11",
}


def body_with(**changes: Any) -> dict[str, Any]:
    visit = {**VALID_VISIT, **changes}
    return {"count": 1, "visits": [{k: v for k, v in visit.items() if v is not ...}]}


BAD_BODIES: dict[str, Any] = {
    "not an object": [1, 2],
    "missing count": {"visits": [VALID_VISIT]},
    "missing visits": {"count": 1},
    "count is a string": {"count": "1", "visits": [VALID_VISIT]},
    "count is a boolean": {"count": True, "visits": [VALID_VISIT]},
    "count is negative": {"count": -1, "visits": [VALID_VISIT]},
    "count is a float": {"count": 1.0, "visits": [VALID_VISIT]},
    "count mismatch": {"count": 2, "visits": [VALID_VISIT]},
    "visits empty": {"count": 0, "visits": []},
    "visits not a list": {"count": 1, "visits": {"a": VALID_VISIT}},
    "visit not an object": {"count": 1, "visits": ["S00339218"]},
    "store_id missing": body_with(store_id=...),
    "image_url missing": body_with(image_url=...),
    "visit_time missing": body_with(visit_time=...),
    "store_id empty": body_with(store_id=""),
    "store_id not a string": body_with(store_id=339218),
    "image_url empty": body_with(image_url=[]),
    "image_url a string": body_with(image_url="http://example.com/a.jpg"),
    "image_url holds a number": body_with(image_url=[5]),
    "relative url": body_with(image_url=["/a.jpg"]),
    "ftp url": body_with(image_url=["ftp://example.com/a.jpg"]),
    "url without host": body_with(image_url=["http:///a.jpg"]),
    "bad visit_time": body_with(visit_time="11/03/2025"),
    "visit_time not a string": body_with(visit_time=20250311),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_body_is_400_with_error_message(client: Client, name: str) -> None:
    response = client.submit(BAD_BODIES[name])
    assert response.status_code == 400
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]


def test_error_message_names_the_field(client: Client) -> None:
    assert client.submit(body_with(visit_time="yesterday")).json() == {
        "error": "visits[0].visit_time must be an ISO 8601 date or date-time"
    }
    assert client.submit({"count": 3, "visits": [VALID_VISIT]}).json() == {
        "error": "count (3) does not match the number of visits (1)"
    }


@pytest.mark.parametrize("raw", [b"", b"not json", b"{", b'{"count": 1, "visits": [}', b"\xff\xfe"])
def test_body_that_is_not_json_is_400(client: Client, raw: bytes) -> None:
    response = requests.post(f"{client.base_url}/api/submit/", data=raw, timeout=30)
    assert response.status_code == 400
    assert response.json() == {"error": "body must be a JSON object"}


def test_body_over_the_size_limit_is_413(client: Client) -> None:
    response = requests.post(
        f"{client.base_url}/api/submit/", data=b" " * (10 * 1024 * 1024 + 1), timeout=60
    )
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]


def test_more_images_than_the_limit_is_413(client: Client) -> None:
    urls = [f"http://example.com/{i}.jpg" for i in range(100_001)]
    response = client.submit(job((STORE, urls)))
    assert response.status_code == 413
    assert response.json() == {"error": "a job may hold at most 100000 images"}


@pytest.mark.parametrize("jobid", [None, "", "abc", "1.5", "-1", "+1", " 1", "99999999", "1e3"])
def test_status_of_missing_bad_or_unknown_job_is_400_empty(
    client: Client, jobid: str | None
) -> None:
    params = {} if jobid is None else {"jobid": jobid}
    response = requests.get(f"{client.base_url}/api/status", params=params, timeout=30)
    assert response.status_code == 400
    assert response.content == b"{}"


def test_results_of_unknown_job_is_400_empty(client: Client) -> None:
    response = requests.get(
        f"{client.base_url}/api/results", params={"jobid": 99999999}, timeout=30
    )
    assert (response.status_code, response.json()) == (400, {})


def test_spec_example_completes_with_exact_perimeters(
    client: Client, image_server: ImageServer
) -> None:
    names = ["red.jpg", "green.png", "blue.webp", "tiny.gif", "wide.bmp", "tall.tiff"]
    payload = job(
        (STORE, [image_server.url(f"img/{n}") for n in names[:3]]),
        (OTHER_STORE, [image_server.url(f"img/{n}") for n in names[3:]]),
    )
    response = requests.post(f"{client.base_url}/api/submit", json=payload, timeout=30)
    assert response.status_code == 201
    job_id = response.json()["job_id"]
    assert list(response.json()) == ["job_id"] and isinstance(job_id, int)
    assert client.wait(job_id) == {"status": "completed", "job_id": job_id}
    rows = client.all_results(job_id)
    assert [row["image_url"] for row in rows] == [image_server.url(f"img/{n}") for n in names]
    assert [row["perimeter"] for row in rows] == [perimeter(n) for n in names]
    assert [row["store_id"] for row in rows] == [STORE] * 3 + [OTHER_STORE] * 3
    assert all(row["state"] == "done" and row["processed_at"] > 0 for row in rows)
    assert rows[0]["width"] == 640 and rows[0]["height"] == 480


def test_status_bodies_have_exactly_the_documented_keys(
    client: Client, image_server: ImageServer
) -> None:
    job_id = client.submit_ok(job((STORE, [image_server.url("img/red.jpg")])))
    ongoing_or_done = client.status(job_id).json()
    assert set(ongoing_or_done) == {"status", "job_id"}
    failing = client.submit_ok(job(("NOT-A-STORE", [image_server.url("img/red.jpg")])))
    assert set(client.wait(failing)) == {"status", "job_id", "error"}


def test_mixed_job_lists_each_failing_store_once_and_keeps_other_results(
    client: Client, image_server: ImageServer
) -> None:
    payload = job(
        (STORE, [image_server.url("img/red.jpg"), image_server.url("img/green.png")]),
        ("RP00001", [image_server.url("status/404"), image_server.url("img/blue.webp")]),
        ("UNKNOWN-1", [image_server.url("img/red.jpg")]),
        ("RP00002", [image_server.url("img/page.jpg")]),
        ("RP00003", [image_server.url("img/truncated.png"), image_server.url("img/truncated.jpg")]),
        ("RP00001", [image_server.url("status/410")]),
        ("RP00004", [image_server.url("img/empty.png")]),
    )
    job_id = client.submit_ok(payload)
    final = client.wait(job_id)
    assert final["status"] == "failed" and final["job_id"] == job_id
    errors = final["error"]
    assert [e["store_id"] for e in errors] == [
        "RP00001",
        "UNKNOWN-1",
        "RP00002",
        "RP00003",
        "RP00004",
    ]
    by_store = {e["store_id"]: e["error"] for e in errors}
    assert (
        by_store["RP00001"] == f"image download failed: {image_server.url('status/404')}: HTTP 404"
    )
    assert by_store["UNKNOWN-1"] == "store_id not in store master"
    assert by_store["RP00002"].startswith("not an image: ")
    assert by_store["RP00003"].startswith("image decode failed: ")
    assert by_store["RP00004"].startswith("not an image: ")
    rows = client.all_results(job_id)
    assert len(rows) == 10
    assert [r["perimeter"] for r in rows[:2]] == [perimeter("red.jpg"), perimeter("green.png")]
    assert rows[3]["perimeter"] == perimeter("blue.webp")
    assert [r["state"] for r in rows] == ["done", "done", "failed", "done"] + ["failed"] * 6


def test_unknown_store_images_are_not_downloaded(client: Client, image_server: ImageServer) -> None:
    path = "img/green.png?unknown-store-probe"
    job_id = client.submit_ok(job(("NOT-IN-MASTER", [image_server.url(path)])))
    assert client.wait(job_id)["status"] == "failed"
    assert image_server.hits[f"/{path}"] == 0


def test_server_error_is_retried_until_success(client: Client, image_server: ImageServer) -> None:
    url = image_server.url("flaky/retry-ok/2/green.png")
    job_id = client.submit_ok(job((STORE, [url])))
    assert client.wait(job_id) == {"status": "completed", "job_id": job_id}
    assert image_server.hits["/flaky/retry-ok/2/green.png"] == 3
    assert client.all_results(job_id)[0]["perimeter"] == perimeter("green.png")


def test_persistent_server_error_fails_after_three_retries(
    client: Client, image_server: ImageServer
) -> None:
    url = image_server.url("flaky/retry-fail/100/green.png")
    job_id = client.submit_ok(job((STORE, [url])))
    final = client.wait(job_id)
    assert final["error"] == [
        {"store_id": STORE, "error": f"image download failed: {url}: HTTP 503"}
    ]
    assert image_server.hits["/flaky/retry-fail/100/green.png"] == 4


def test_client_error_is_not_retried(client: Client, image_server: ImageServer) -> None:
    job_id = client.submit_ok(job((STORE, [image_server.url("status/403?once")])))
    assert client.wait(job_id)["status"] == "failed"
    assert image_server.hits["/status/403?once"] == 1


def test_redirects_are_followed_up_to_five(client: Client, image_server: ImageServer) -> None:
    ok = client.submit_ok(job((STORE, [image_server.url("redirect/5/tall.tiff")])))
    assert client.wait(ok)["status"] == "completed"
    assert client.all_results(ok)[0]["perimeter"] == perimeter("tall.tiff")
    too_many = client.submit_ok(job((STORE, [image_server.url("redirect/6/tall.tiff")])))
    assert client.wait(too_many)["error"][0]["error"].endswith("more than 5 redirects")


def test_results_pages_are_stable_and_complete(client: Client, image_server: ImageServer) -> None:
    names = ["red.jpg", "green.png", "blue.webp"]
    urls = [image_server.url(f"img/{names[i % 3]}?n={i}") for i in range(25)]
    job_id = client.submit_ok(job((STORE, urls[:10]), ("RP00010", urls[10:])))
    client.wait(job_id)
    first = requests.get(
        f"{client.base_url}/api/results", params={"jobid": job_id, "limit": 10}, timeout=30
    ).json()
    assert (first["total"], first["offset"], first["limit"], first["next_offset"]) == (
        25,
        0,
        10,
        10,
    )
    rows = client.all_results(job_id, page=7)
    assert [r["image_url"] for r in rows] == urls
    assert [r["perimeter"] for r in rows] == [perimeter(names[i % 3]) for i in range(25)]
    last = requests.get(
        f"{client.base_url}/api/results", params={"jobid": job_id, "offset": 20}, timeout=30
    ).json()
    assert len(last["results"]) == 5 and last["next_offset"] is None


@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "1001"}, {"offset": "-1"}, {"limit": "x"}]
)
def test_bad_paging_parameters_are_400(
    client: Client, image_server: ImageServer, params: dict
) -> None:
    job_id = client.submit_ok(job((STORE, [image_server.url("img/red.jpg")])))
    response = requests.get(
        f"{client.base_url}/api/results", params={"jobid": job_id, **params}, timeout=30
    )
    assert response.status_code == 400 and "error" in response.json()


def test_job_ids_increase(client: Client, image_server: ImageServer) -> None:
    ids = [client.submit_ok(job((STORE, [image_server.url("img/red.jpg")]))) for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_twenty_concurrent_submitters_each_get_their_own_job(
    client: Client, image_server: ImageServer
) -> None:
    def submit(n: int) -> tuple[int, int]:
        urls = [image_server.url(f"img/green.png?submitter={n}&i={i}") for i in range(n % 4 + 1)]
        response = requests.post(
            f"{client.base_url}/api/submit/", json=job((STORE, urls)), timeout=60
        )
        assert response.status_code == 201
        return n, response.json()["job_id"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        submitted = dict(pool.map(submit, range(20)))
    assert len(set(submitted.values())) == 20
    for n, job_id in submitted.items():
        assert client.wait(job_id)["status"] == "completed"
        rows = client.all_results(job_id)
        assert len(rows) == n % 4 + 1
        assert all(f"submitter={n}&" in r["image_url"] for r in rows)


def test_small_job_is_not_stuck_behind_a_big_one(client: Client, image_server: ImageServer) -> None:
    big = client.submit_ok(
        job((STORE, [image_server.url(f"img/tiny.gif?big={i}") for i in range(4000)]))
    )
    small = client.submit_ok(job((OTHER_STORE, [image_server.url("img/red.jpg?small")] * 2)))
    assert client.wait(small, timeout=30)["status"] == "completed"
    assert client.status(big).json()["status"] == "ongoing"
    assert client.wait(big, timeout=240)["status"] == "completed"
    assert len(client.all_results(big)) == 4000


def test_healthz_and_docs(client: Client) -> None:
    assert requests.get(f"{client.base_url}/healthz", timeout=30).json() == {"status": "ok"}
    spec = requests.get(f"{client.base_url}/openapi.json", timeout=30).json()
    assert {
        "/api/submit/",
        "/api/status",
        "/api/results",
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/cancel",
        "/healthz",
    } <= set(spec["paths"])
    cancel = spec["paths"]["/api/jobs/{job_id}/cancel"]["post"]["responses"]
    assert {"202", "404", "409"} <= set(cancel)
    assert requests.get(f"{client.base_url}/docs", timeout=30).status_code == 200


def test_unknown_route_answers_json_error(client: Client) -> None:
    response = requests.get(f"{client.base_url}/api/nope", timeout=30)
    assert response.status_code == 404
    assert json.loads(response.content) == {"error": "not found"}
