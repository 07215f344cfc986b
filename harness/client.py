"""The HTTP client the tests and scripts talk to the service with, and the submit body builder."""

from __future__ import annotations

import time
from typing import Any

import requests


class Client:
    """A thin HTTP client for the service under test."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        if api_key is not None:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def submit(self, payload: Any) -> requests.Response:
        return self.session.post(f"{self.base_url}/api/submit/", json=payload, timeout=60)

    def submit_ok(self, payload: Any) -> int:
        response = self.submit(payload)
        assert response.status_code == 201, response.text
        return int(response.json()["job_id"])

    def status(self, job_id: int | str) -> requests.Response:
        return self.session.get(f"{self.base_url}/api/status", params={"jobid": job_id}, timeout=60)

    def wait(self, job_id: int, timeout: float = 120) -> dict[str, Any]:
        """Poll the status until the job ends, as a client should: a 503 with Retry-After (a
        database or tracker away for a while) is waited out; any other answer but 200 fails."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.status(job_id)
            if response.status_code == 503 and "Retry-After" in response.headers:
                time.sleep(min(1.0, float(response.headers["Retry-After"])))
                continue
            assert response.status_code == 200, (response.status_code, response.text)
            body = response.json()
            if body["status"] != "ongoing":
                return dict(body)
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} still ongoing after {timeout}s")

    def all_results(self, job_id: int, page: int = 1000) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            response = self.session.get(
                f"{self.base_url}/api/results",
                params={"jobid": job_id, "offset": offset, "limit": page},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            body = response.json()
            rows.extend(body["results"])
            offset = body["next_offset"]
        return rows


def job(*visits: tuple[str, list[str]], visit_time: str = "2025-03-11") -> dict[str, Any]:
    """A submit body: one visit per (store id, image URLs), all at `visit_time`."""
    return {
        "count": len(visits),
        "visits": [
            {"store_id": store, "image_url": urls, "visit_time": visit_time}
            for store, urls in visits
        ],
    }
