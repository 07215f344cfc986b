"""The default page sizes (`RESULTS_PAGE_DEFAULT`,
`JOBS_PAGE_DEFAULT`) against the documented largest page (`RESULTS_PAGE_MAX`: "largest
`limit` of `/api/results` and `/api/jobs`"). In process, the real routes, a scripted tracker."""

from __future__ import annotations

from typing import Any

import pytest

from core.models import JobStatus, JobView, ResultsPage
from core.settings import Settings, SettingsError
from harness.asgi import ScriptedTracker, api_with, request
from service.app import api

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _no_overrides_left() -> Any:
    yield
    api.dependency_overrides.clear()


def settings(**values: str) -> Settings:
    env = {"IMAGE_SERVICE_DATA_DIR": "/nonexistent"}
    env.update({f"IMAGE_SERVICE_{k.upper()}": v for k, v in values.items()})
    return Settings.from_env(env)


@pytest.mark.parametrize(
    ("values", "target", "method"),
    [
        ({"results_page_default": "5000"}, "/api/results?jobid=7", "results"),
        ({"jobs_page_default": "5000"}, "/api/jobs", "jobs"),
        ({"results_page_max": "50"}, "/api/results?jobid=7", "results"),
    ],
)
def test_a_page_asked_without_limit_is_no_larger_than_the_largest_page(
    values: dict[str, str], target: str, method: str
) -> None:
    """Either the settings refuse a default above the maximum (naming it), or the default
    page keeps within the maximum; the service does neither: it asks the tracker for, and
    answers, a page of 5,000 rows (or 100 with a maximum of 50)."""
    try:
        chosen = settings(**values)
    except SettingsError:
        return  # refused at start: fine
    tracker = ScriptedTracker(
        results=ResultsPage(JobView(7, JobStatus.ONGOING), 0, 0, ()), jobs=(0, [])
    )
    status, _headers, _body = request(api_with(tracker, chosen), "GET", target)
    assert status == 200
    [(name, args)] = tracker.calls
    limit = args[2]  # results(job_id, offset, limit, client) / jobs(client, offset, limit)
    assert name == method
    largest = chosen.results_page_max
    assert limit <= largest, f"asked for {limit} rows, max {largest}"
