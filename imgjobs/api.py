"""The service's HTTP API as Python calls, with its errors as two exceptions."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import requests

SUBMIT_ATTEMPTS = 3
RESULTS_PAGE = 1000


class ServiceError(Exception):
    """The service answered with an error; `str()` is its message."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


class Unreachable(Exception):
    """No answer from the service at all."""


def why(exc: requests.RequestException) -> str:
    """The short reason under requests' nested wrappers: "Connection refused", "timed out"."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    return found.group(1) if found else type(exc).__name__


class ServiceClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "imgjobs"
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"

    def submit(self, payload: dict[str, Any], idempotency_key: str | None = None) -> int:
        """The new job's id. Retried on connection trouble and 503 with one Idempotency-Key,
        so a retry can never start the job twice."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            try:
                body = self._call("POST", "/api/submit/", json=payload, headers=headers)
                return int(body["job_id"])
            except (Unreachable, ServiceError) as exc:
                retryable = isinstance(exc, Unreachable) or exc.status_code == 503
                if not retryable or attempt == SUBMIT_ATTEMPTS:
                    raise
                time.sleep(attempt)
        raise AssertionError("unreachable")

    def job(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/api/jobs/{job_id}")

    def jobs(self, limit: int, offset: int = 0) -> dict[str, Any]:
        return self._call("GET", "/api/jobs", params={"limit": limit, "offset": offset})

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self._call("POST", f"/api/jobs/{job_id}/cancel")

    def results(self, job_id: int) -> Iterator[dict[str, Any]]:
        """Every result row of the job, page after page."""
        offset: int | None = 0
        while offset is not None:
            page = self._call(
                "GET",
                "/api/results",
                params={"jobid": job_id, "offset": offset, "limit": RESULTS_PAGE},
            )
            yield from page["results"]
            offset = page["next_offset"]

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = self.base_url + path
        try:
            response = self._session.request(method, url, timeout=self._timeout, **kwargs)
        except requests.RequestException as exc:
            raise Unreachable(f"cannot reach the service at {self.base_url} ({why(exc)})") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            message = body.get("error") if isinstance(body, dict) else None
            if not message and path == "/api/results":
                message = "no such job"  # the spec's answer for it is a bare 400 {}
            raise ServiceError(response.status_code, message or f"HTTP {response.status_code}")
        if not isinstance(body, dict):
            raise ServiceError(response.status_code, "the service answered with no JSON object")
        return body
