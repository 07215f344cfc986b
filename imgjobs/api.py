"""The service's HTTP API as Python calls, with its errors as two exceptions."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import requests

SUBMIT_ATTEMPTS = 3
RESULTS_PAGE = 1000  # the service's default cap; a lower one it names is adopted (page_cap)
# A proxy with no healthy service behind it, or a service shedding load: answers that pass.
TRANSIENT_STATUSES = frozenset({502, 503, 504})
# What requests raises when the connection fails, hangs or breaks mid-answer; the rest of its
# errors (a malformed URL, a redirect loop) would fail the same way on every retry.
TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
PAGE_CAP = re.compile(r"limit must be between 1 and (\d+)")

T = TypeVar("T")


class ServiceError(Exception):
    """The service answered with an error; `str()` is its message."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


class Unreachable(Exception):
    """No answer from the service at all. `transient` when a retry may well get one."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def is_transient(exc: ServiceError | Unreachable) -> bool:
    if isinstance(exc, Unreachable):
        return exc.transient
    return exc.status_code in TRANSIENT_STATUSES


def describe(exc: ServiceError | Unreachable) -> str:
    """The error as one line: a service error's message with its status."""
    if isinstance(exc, Unreachable) or str(exc) == f"HTTP {exc.status_code}":
        return str(exc)
    return f"{exc} (HTTP {exc.status_code})"


def page_cap(exc: ServiceError) -> int | None:
    """The largest results page the service allows, when `exc` is its refusal of a larger one."""
    found = PAGE_CAP.search(str(exc)) if exc.status_code == 400 else None
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class Patience:
    """How a polling loop waits out transient trouble: retries after delays doubling from
    `first_delay` to `max_delay`, until the trouble has lasted `give_up_after` seconds in a row."""

    give_up_after: float = 60.0
    first_delay: float = 0.5
    max_delay: float = 5.0
    # A poll that hangs longer counts as trouble. Shorter than `give_up_after`, so a hung
    # service is retried within the window rather than using it all on one request.
    request_timeout: float = 10.0


def patiently(call: Callable[[], T], patience: Patience) -> T:
    """`call()`, retried through transient trouble; once that has lasted
    `patience.give_up_after` seconds in a row, an Unreachable that names the last error."""
    delay = patience.first_delay
    trouble_since: float | None = None
    while True:
        started = time.monotonic()
        try:
            return call()
        except (ServiceError, Unreachable) as exc:
            if not is_transient(exc):
                raise
            if trouble_since is None:
                trouble_since = started
            lasted = time.monotonic() - trouble_since
            if lasted >= patience.give_up_after:
                raise Unreachable(
                    f"the service has been unavailable for {patience.give_up_after:g} s,"
                    f" giving up; last error: {describe(exc)}"
                ) from None
            time.sleep(min(delay, patience.give_up_after - lasted))
            delay = min(delay * 2, patience.max_delay)


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

    def job(self, job_id: int, timeout: float | None = None) -> dict[str, Any]:
        return self._call("GET", f"/api/jobs/{job_id}", timeout=timeout)

    def jobs(self, limit: int, offset: int = 0) -> dict[str, Any]:
        return self._call("GET", "/api/jobs", params={"limit": limit, "offset": offset})

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self._call("POST", f"/api/jobs/{job_id}/cancel")

    def results(self, job_id: int) -> Iterator[dict[str, Any]]:
        """Every result row of the job, page after page. A service configured with a smaller
        page cap refuses the first page and names its cap; that page is asked again, and every
        later one, with the cap."""
        offset: int | None = 0
        limit = RESULTS_PAGE
        while offset is not None:
            params = {"jobid": job_id, "offset": offset, "limit": limit}
            try:
                page = self._call("GET", "/api/results", params=params)
            except ServiceError as exc:
                cap = page_cap(exc)
                if cap is None or not 1 <= cap < limit:  # a cap that would not help: no loop
                    raise
                limit = cap
                continue
            yield from page["results"]
            offset = page["next_offset"]

    def _call(
        self, method: str, path: str, timeout: float | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        url = self.base_url + path
        try:
            response = self._session.request(
                method, url, timeout=self._timeout if timeout is None else timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise Unreachable(
                f"cannot reach the service at {self.base_url} ({why(exc)})",
                transient=isinstance(exc, TRANSIENT_ERRORS),
            ) from None
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
