"""`make monitor` against a real Prometheus: the service started as `python -m launcher.monitor`
on loopback ports of the test's own, a job run through it, and Prometheus' HTTP API asked for
every series of the README's table and every expression of the Grafana dashboard. The numbers
must agree with what the API says of the job."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.client import Client, job
from harness.imageserver import ImageServer
from harness.procs import alive, descendants
from harness.prometheus import PrometheusApi
from harness.service import ServiceProcess, free_port
from harness.sockets import listening_sockets
from launcher.prometheus import MONITORING, RULES

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = MONITORING / "image-service-dashboard.json"
STORE = "S00339218"
UNKNOWN_STORE = "S_NOT_A_STORE"
# Series the job below does not make: the job store never fails in it.
NOT_PROVOKED = ("store_errors",)
GOOD, PAGES, TRUNCATED, MISSING, UNKNOWN = 240, 6, 4, 5, 3


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, str]]:
    data_dir = tmp_path_factory.mktemp("monitored")
    prometheus_url = f"http://127.0.0.1:{free_port()}"
    running = ServiceProcess(
        data_dir,
        module="launcher.monitor",
        env_overrides={
            "RAY_PROMETHEUS_HOST": prometheus_url,
            "IMAGE_SERVICE_INCLUDE_DASHBOARD": "1",
            "IMAGE_SERVICE_DASHBOARD_PORT": str(free_port()),
            # Ray's metrics reach the agent every second rather than every ten.
            "RAY_metrics_report_interval_ms": "1000",
            # A job of a few hundred images that lasts ~20 s, several scrapes: a rate needs two
            # samples of a counter that has moved between them.
            "IMAGE_SERVICE_CONCURRENCY": "8",
            "IMAGE_SERVICE_GPU_DELAY": "0.5-0.9",
        },
    ).start()
    try:
        yield running, prometheus_url
    finally:
        running.stop()


@pytest.fixture(scope="module")
def ran_job(monitored: tuple[ServiceProcess, str], image_server: ImageServer) -> dict[str, Any]:
    """One job through the monitored service, and what the API and the client saw of it."""
    service, prometheus_url = monitored
    client = Client(service.url)
    url = image_server.url
    key = uuid.uuid4().hex
    payload = {
        **job(
            (STORE, [url(f"img/red.jpg?n={n}") for n in range(GOOD)]),
            (STORE, [url(f"img/page.jpg?n={n}") for n in range(PAGES)]),
            (STORE, [url(f"img/truncated.jpg?n={n}") for n in range(TRUNCATED)]),
            (STORE, [url(f"status/404?n={n}") for n in range(MISSING)]),
            (UNKNOWN_STORE, [url(f"img/red.jpg?u={n}") for n in range(UNKNOWN)]),
        ),
        "callback_url": url(f"callback/0/{key}"),
    }
    started = time.time()
    job_id = client.submit_ok(payload)
    # A second, tiny job whose callback is refused (404: not retried), to count a failure.
    refused = client.submit_ok(
        {**job((STORE, [url("img/red.jpg?refused")])), "callback_url": url("nowhere/callback")}
    )
    polls = _wait_settled(client, job_id) + _wait_settled(client, refused)
    ended = time.time()
    results = client.all_results(job_id) + client.all_results(refused)
    deadline = time.monotonic() + 30
    while key not in image_server.callbacks and time.monotonic() < deadline:
        time.sleep(0.2)
    return {
        "prometheus": PrometheusApi(prometheus_url),
        "results": results,
        "status_polls": polls,
        "started": started,
        "ended": ended,
        "callback_delivered": key in image_server.callbacks,
    }


def _wait_settled(client: Client, job_id: int) -> int:
    """Poll the job's status until it ends; how many polls that took (each answered 200)."""
    polls = 0
    while True:
        response = client.status(job_id)
        assert response.status_code == 200, response.text
        polls += 1
        if response.json()["status"] != "ongoing":
            return polls
        time.sleep(0.2)


def _summed(api: PrometheusApi, expression: str, expected: float, timeout: float = 60) -> float:
    """`sum(expression)` once Prometheus has scraped the value the API implies (or the last)."""
    seen = api.wait_for(f"sum({expression})", expected, timeout)
    return 0.0 if seen is None else seen


def readme_series() -> dict[str, str]:
    """The README Metrics table's series, name (without labels) to type."""
    found: dict[str, str] = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and (
            match := re.fullmatch(r"`(ray_image_service_\w+)(\{[^}]*\})?`", cells[0])
        ):
            found[match.group(1)] = cells[1]
    return found


def panel_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the dashboard, its variables given values that
    select everything, as Grafana would with "All" chosen."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expression = re.sub(r"\$\{?__\w+\}?", "1m", target["expr"])
            expression = re.sub(r"\$\{?\w+(:\w+)?\}?", ".*", expression)
            found.append((panel["title"], expression))
    return found


def test_the_counts_prometheus_holds_are_the_jobs(ran_job: dict[str, Any]) -> None:
    api: PrometheusApi = ran_job["prometheus"]
    results = ran_job["results"]
    done = sum(1 for row in results if row["state"] == "done")
    assert done == GOOD + 1  # the refused-callback job's one image too
    processed = "ray_image_service_images_processed_total"
    assert _summed(api, processed, done) == done
    failed = 'ray_image_service_images_failed_total{reason="%s"}'
    assert _summed(api, failed % "download", MISSING) == MISSING
    assert _summed(api, failed % "unknown_store", UNKNOWN) == UNKNOWN
    assert _summed(api, failed % "not_an_image", PAGES) == PAGES
    assert _summed(api, failed % "decode", TRUNCATED) == TRUNCATED
    jobs_ended = 'ray_image_service_jobs{state=~"completed|failed"}'
    assert _summed(api, jobs_ended, 2) == 2
    durations = 'ray_image_service_job_duration_seconds_count{state=~"completed|failed"}'
    assert _summed(api, durations, 2) == 2
    assert ran_job["callback_delivered"]
    callbacks = 'ray_image_service_callbacks_total{outcome="%s"}'
    assert _summed(api, callbacks % "delivered", 1) == 1
    assert _summed(api, callbacks % "failed", 1) == 1
    # Every status poll counted, those answered at the edge without entering Serve included.
    polls = ran_job["status_polls"]
    status = 'ray_image_service_http_requests_total{route="/api/status",code="200"}'
    assert _summed(api, status, polls) == polls
    submits = 'ray_image_service_http_requests_total{route="/api/submit",code="201"}'
    assert _summed(api, submits, 2) == 2
    # The series carry Ray's session label, which the dashboard's filter selects on.
    [sample] = api.vector(f"sum by (SessionName) ({processed})")
    assert sample["metric"]["SessionName"].startswith("session_")


def test_serve_counts_fewer_status_requests_than_were_answered(ran_job: dict[str, Any]) -> None:
    """The README's claim: Serve's own request counter misses the polls answered at the edge,
    which is why the service counts requests itself."""
    api: PrometheusApi = ran_job["prometheus"]
    serve_counted = api.value('sum(ray_serve_num_http_requests_total{route="/api/status"})') or 0
    assert serve_counted < ran_job["status_polls"] / 2


def test_every_series_and_panel_has_data_and_every_rule_evaluates(
    ran_job: dict[str, Any], monitored: tuple[ServiceProcess, str]
) -> None:
    api: PrometheusApi = ran_job["prometheus"]
    # Two scrapes and rule evaluations past the job's end, its whole run within the last minute.
    time.sleep(max(0.0, ran_job["ended"] + 12 - time.time()))
    at = time.time()
    assert at - ran_job["started"] < 55, "the job took too long for the panels' 1m windows"
    series = readme_series()
    assert len(series) >= 20, series
    missing = []
    for name, kind in series.items():
        if any(part in name for part in NOT_PROVOKED):
            continue
        expression = f"{name}_count" if kind == "histogram" else name
        if not api.vector(expression, at):
            missing.append(name)
    assert not missing, f"README series Prometheus has no data for: {missing}"

    empty = []
    for title, expression in panel_expressions():
        if any(part in expression for part in NOT_PROVOKED):
            continue
        values = [sample["value"][1] for sample in api.vector(expression, at)]
        if not values or all(value in ("NaN", "+Inf", "-Inf") for value in values):
            empty.append((title, expression, values))
    assert not empty, f"dashboard panels without data at the job's end: {empty}"

    groups = api.rule_groups()
    assert {group["file"] for group in groups} == {str(RULES)}
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 10
    broken = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
    assert not broken
    firing = [
        rule["name"] for rule in rules if rule["type"] == "alerting" and rule["state"] == "firing"
    ]
    assert not firing  # a healthy service that just finished a job

    service, _ = monitored
    targets = api.targets()
    assert targets and all(target["health"] == "up" for target in targets), targets
    scraped = {target["labels"]["instance"] for target in targets}
    assert f"127.0.0.1:{service.metrics_port}" in scraped or any(
        instance.endswith(f":{service.metrics_port}") for instance in scraped
    ), scraped


def test_prometheus_listens_on_loopback_alone_and_stops_with_the_service(
    monitored: tuple[ServiceProcess, str], ran_job: dict[str, Any]
) -> None:
    """The README's Security table and `make monitor`'s promise: no daemon left behind. Runs
    last: it stops the module's service."""
    service, prometheus_url = monitored
    assert service.process is not None
    sockets = listening_sockets(descendants([service.process.pid]))
    ours = [s for s in sockets if s.command == "prometheus"]
    port = int(prometheus_url.rsplit(":", 1)[1])
    assert {s.port for s in ours} == {port}, sockets
    assert all(s.loopback_only for s in ours), ours
    pids = {s.pid for s in ours}
    service.stop()
    deadline = time.monotonic() + 30
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pids)
    assert not ran_job["prometheus"].ready()
