"""`imgjobs`, the installed command, against the real service; its pure parts on their own."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from harness.client import Client, job
from harness.imageserver import ImageServer, perimeter
from harness.service import ServiceProcess
from imgjobs.cli import follow
from imgjobs.jobfile import CsvOrigin, JobFileError, job_from_csv, visits_from_csv
from imgjobs.progress import ProcessedCount, ProgressMeter, format_duration

STORE = "S00339218"
OTHER_STORE = "S01408764"
IMGJOBS = str(Path(sys.executable).with_name("imgjobs"))


def imgjobs(
    service: ServiceProcess, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IMGJOBS, "--url", service.url, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_job(tmp_path: Path, payload: object, name: str = "visits.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(payload))
    return path


# ---- pure parts ------------------------------------------------------------------------------


def test_csv_rows_group_into_visits_in_first_seen_order() -> None:
    text = (
        "store_id,visit_time,image_url\n"
        "S1,2025-01-01,http://a.test/1.jpg\n"
        "S2,2025-01-01,http://a.test/2.jpg\n"
        "\n"
        "S1,2025-01-01,http://a.test/3.jpg\n"
        "S1,2025-01-02,http://a.test/4.jpg\n"
    )
    assert visits_from_csv(text) == {
        "count": 3,
        "visits": [
            {
                "store_id": "S1",
                "visit_time": "2025-01-01",
                "image_url": ["http://a.test/1.jpg", "http://a.test/3.jpg"],
            },
            {"store_id": "S2", "visit_time": "2025-01-01", "image_url": ["http://a.test/2.jpg"]},
            {"store_id": "S1", "visit_time": "2025-01-02", "image_url": ["http://a.test/4.jpg"]},
        ],
    }


def test_csv_without_header_and_bad_rows() -> None:
    assert visits_from_csv("S1,2025-01-01,http://a.test/1.jpg")["count"] == 1
    with pytest.raises(JobFileError, match="line 3: expected 3 columns"):
        visits_from_csv("store_id,visit_time,image_url\nS1,2025,u\nS1,u\n")
    with pytest.raises(JobFileError, match="no rows"):
        visits_from_csv("store_id,visit_time,image_url\n")


def test_csv_origin_names_the_line_a_row_starts_on() -> None:
    text = (
        "\r\n"  # a blank first line: no header then
        "S1,2025-01-01,http://a.test/1.jpg\r\n"
        'S2,2025-01-01,"http://a.test/\n2.jpg"\r\n'  # a quoted cell over two lines
        "S1,2025-01-01,http://a.test/3.jpg\r\n"
        "S2,2025-01-01,bad\r\n"
    )
    job = job_from_csv(text, "v.csv")
    assert job.origin == CsvOrigin("v.csv", ((2, 5), (3, 6)))
    locate = job.origin.locate
    assert locate("visits[1].image_url[1] must be an absolute http(s) URL") == (
        "v.csv line 6, column 3 (image_url): must be an absolute http(s) URL"
    )
    assert locate("visits[1].store_id is longer than 256 characters") == (
        "v.csv line 3, column 1 (store_id): is longer than 256 characters"
    )
    # Paths this file has no line for, and messages about the whole body, pass unchanged.
    for message in (
        "visits[2].store_id must be a non-empty string",
        "visits[0].image_url[2] must be a string",
        "count must be at most 100000",
        "the field visits[0].store_id is not at the start",
        "visits[99999999999999999999].store_id x",
    ):
        assert locate(message) == message


def poll(status: str, done: int, failed: int, queued: int) -> dict[str, object]:
    return {"status": status, "done": done, "failed": failed, "queued": queued}


def test_processed_count_leaves_out_what_a_cancel_dropped_and_no_more() -> None:
    # Failures before a cancel, and of images in flight after it, were processed.
    count = ProcessedCount()
    assert count.update(poll("ongoing", 10, 5, 85)) == 15
    assert count.update(poll("cancelling", 12, 90, 0)) == 17  # 85 dropped, 2 in flight done
    assert count.update(poll("cancelled", 12, 93, 0)) == 20  # 3 in flight failed
    assert count.dropped == 85
    # Images dispatched in the poll interval of the cancel leave the queue but are not dropped:
    # never more dropped than failed (here 50 left the queue, 40 failed).
    count = ProcessedCount()
    count.update(poll("ongoing", 0, 0, 50))
    assert count.update(poll("cancelling", 10, 40, 0)) == 10 and count.dropped == 40
    # A job that failed without a cancel processed every image it failed.
    count = ProcessedCount()
    assert count.update(poll("failed", 3, 7, 0)) == 10 and count.dropped == 0


def test_progress_rate_and_eta_come_from_recent_samples() -> None:
    meter = ProgressMeter(total=1000)
    assert meter.rate() is None and meter.eta_seconds() is None
    meter.add(0.0, 0)
    meter.add(2.0, 100)
    assert meter.rate() == 50.0 and meter.eta_seconds() == 18.0
    line = meter.line("ongoing", 100, 3)
    assert "100/1000" in line and "50.0 img/s" in line and "ETA 0:18" in line
    assert "failed 3" in line
    assert format_duration(3725) == "1:02:05"


# ---- against the service ---------------------------------------------------------------------


def test_submit_wait_completes_with_exit_0_and_results_to_csv(
    service: ServiceProcess, image_server: ImageServer, tmp_path: Path
) -> None:
    names = ["red.jpg", "green.png", "tall.tiff"]
    rows = [(STORE, "2025-03-11", image_server.url(f"img/{name}")) for name in names]
    rows.append((OTHER_STORE, "2025-03-12", image_server.url("img/wide.bmp")))
    job_csv = tmp_path / "visits.csv"
    job_csv.write_text("\n".join(",".join(row) for row in rows) + "\n")

    submitted = imgjobs(service, "submit", str(job_csv), "--wait", "--interval", "0.1")
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.strip())
    assert "4/4 100%" in submitted.stderr
    assert f"job {job_id} completed: 4 images, 4 done, 0 failed" in submitted.stderr

    out = tmp_path / "results.csv"
    written = imgjobs(service, "results", str(job_id), "-o", str(out))
    assert written.returncode == 0, written.stderr
    with out.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["image_url"] for r in table] == [row[2] for row in rows]
    assert [int(r["perimeter"]) for r in table] == [
        perimeter(name) for name in [*names, "wide.bmp"]
    ]
    assert [r["store_id"] for r in table] == [STORE] * 3 + [OTHER_STORE]
    assert {r["state"] for r in table} == {"done"}
    assert list(tmp_path.glob(".results.csv.*")) == []  # no temporary file left behind


def test_results_as_json_stream_every_page(
    service: ServiceProcess, client: Client, image_server: ImageServer
) -> None:
    urls = [image_server.url(f"img/tiny.gif?{i}") for i in range(1005)]  # two pages
    job_id = client.submit_ok(job((STORE, urls)))
    client.wait(job_id)
    shown = imgjobs(service, "results", str(job_id), "--format", "json")
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert [row["image_url"] for row in rows] == urls
    assert all(row["perimeter"] == 4 for row in rows)


def test_failed_job_exits_1_and_names_the_store(
    service: ServiceProcess, image_server: ImageServer, tmp_path: Path
) -> None:
    payload = job((STORE, [image_server.url("img/red.jpg")]), ("NOPE", [image_server.url("x")]))
    done = imgjobs(service, "submit", str(write_job(tmp_path, payload)), "--wait")
    assert done.returncode == 1, done.stderr
    assert "NOPE: store_id not in store master" in done.stderr


def test_cancel_mid_job_from_the_cli(
    service: ServiceProcess, client: Client, image_server: ImageServer, tmp_path: Path
) -> None:
    key = uuid.uuid4().hex[:8]
    urls = [image_server.url(f"slow/300/green.png?{key}-{i}") for i in range(300)]
    waiting = subprocess.Popen(
        [IMGJOBS, "--url", service.url, "submit", str(write_job(tmp_path, job((STORE, urls)))),
         "--wait", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert waiting.stdout is not None
        job_id = int(waiting.stdout.readline())
        time.sleep(1)
        cancelled = imgjobs(service, "cancel", str(job_id))
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.startswith(f"job {job_id} cancel")
        _, stderr = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 1
    assert f"job {job_id} cancelled" in stderr
    assert client.status(job_id).json()["status"] == "failed"
    again = imgjobs(service, "status", str(job_id))
    assert again.returncode == 0 and f"job {job_id}: cancelled" in again.stdout


def test_cancel_of_a_completed_job_exits_3(
    service: ServiceProcess, client: Client, image_server: ImageServer
) -> None:
    # The service answers 409; exit 2 would say "usage or connection error", which it is not.
    job_id = client.submit_ok(job((STORE, [image_server.url("img/red.jpg")])))
    client.wait(job_id)
    late = imgjobs(service, "cancel", str(job_id))
    assert (late.returncode, late.stdout) == (3, "")
    assert late.stderr == f"imgjobs: job {job_id} has already completed; nothing to cancel\n"


def test_resubmitting_with_one_idempotency_key_returns_the_same_job(
    service: ServiceProcess, image_server: ImageServer, tmp_path: Path
) -> None:
    path = write_job(tmp_path, job((STORE, [image_server.url("img/red.jpg")])))
    key = f"cli-{uuid.uuid4()}"
    first = imgjobs(service, "submit", str(path), "--idempotency-key", key)
    second = imgjobs(service, "submit", str(path), "--idempotency-key", key)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout
    other = write_job(tmp_path, job((OTHER_STORE, [image_server.url("img/red.jpg")])), "b.json")
    conflict = imgjobs(service, "submit", str(other), "--idempotency-key", key)
    assert conflict.returncode == 2
    assert conflict.stderr.startswith("imgjobs: error: this Idempotency-Key was used for job")
    assert conflict.stderr.count("\n") == 1


def test_jobs_table_lists_the_newest_first(
    service: ServiceProcess, client: Client, image_server: ImageServer
) -> None:
    job_id = client.submit_ok(job((STORE, [image_server.url("img/red.jpg")])))
    client.wait(job_id)
    table = imgjobs(service, "jobs", "--limit", "1")
    assert table.returncode == 0, table.stderr
    header, row, *_ = table.stdout.splitlines()
    assert header.split() == ["JOB", "STATUS", "IMAGES", "DONE", "FAILED", "CREATED", "FINISHED"]
    assert row.split()[:5] == [str(job_id), "completed", "1", "1", "0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "99999999"), "imgjobs: error: no job 99999999 (HTTP 404)\n"),
        (("cancel", "99999999"), "imgjobs: error: no job 99999999 (HTTP 404)\n"),
        (("submit", "/no/such/file.json"), "imgjobs: error: cannot read /no/such/file.json"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    service: ServiceProcess, args: tuple[str, ...], message: str
) -> None:
    failed = imgjobs(service, *args)
    assert failed.returncode == 2
    assert failed.stderr.startswith(message) and failed.stderr.count("\n") == 1
    assert "Traceback" not in failed.stderr


def test_a_csv_refused_by_the_service_names_its_line(
    service: ServiceProcess, image_server: ImageServer, tmp_path: Path
) -> None:
    # The service's message names `visits[1].image_url[299]`; the user wrote line 601.
    rows = ["store_id,visit_time,image_url"]
    for i in range(1000):
        url = "http:/no-host/x.jpg" if i == 599 else image_server.url(f"img/red.jpg?{i}")
        rows.append(f"{(STORE, OTHER_STORE)[i % 2]},2025-03-11,{url}")
    path = tmp_path / "visits.csv"
    path.write_text("\n".join(rows) + "\n")
    refused = imgjobs(service, "submit", str(path))
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        f"imgjobs: error: {path} line 601, column 3 (image_url):"
        " must be an absolute http(s) URL (HTTP 400)\n"
    )


def test_unreachable_service_and_bad_usage_exit_2(tmp_path: Path) -> None:
    down = subprocess.run(
        [IMGJOBS, "--url", "http://127.0.0.1:9", "jobs"], capture_output=True, text=True, timeout=30
    )
    assert down.returncode == 2
    assert down.stderr == (
        "imgjobs: error: cannot reach the service at http://127.0.0.1:9 (Connection refused)\n"
    )
    usage = subprocess.run([IMGJOBS, "status"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage: imgjobs status" in usage.stderr
    for command in ("submit", "wait", "status", "results", "cancel", "jobs"):
        helped = subprocess.run([IMGJOBS, command, "--help"], capture_output=True, text=True)
        assert helped.returncode == 0 and helped.stdout.startswith(f"usage: imgjobs {command}")


class ScriptedJob:
    """Stands in for the service in a pure test of `follow`: answers a fixed series of details."""

    def __init__(self, settled_counts: list[int]) -> None:
        self._answers = iter(settled_counts)

    def job(self, job_id: int, timeout: float | None = None) -> dict[str, object]:
        settled = next(self._answers)
        status = "completed" if settled == 100 else "ongoing"
        return {
            "job_id": job_id,
            "status": status,
            "total": 100,
            "done": settled,
            "failed": 0,
            "in_flight": 0,
            "queued": 100 - settled,
        }


def test_follow_into_a_log_writes_a_line_every_few_seconds_and_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(time, "sleep", lambda _seconds: None)
    ticks = iter(range(0, 100, 1))  # one second per poll
    out = io.StringIO()
    final = follow(ScriptedJob([*range(0, 100, 10), 100]), 1, 1.0, out, lambda: next(ticks))  # type: ignore[arg-type]
    lines = out.getvalue().splitlines()
    assert final["status"] == "completed"
    assert [line.split("]")[1].split()[0] for line in lines] == ["0/100", "50/100", "100/100"]
    assert lines[-1].endswith("completed") and "10.0 img/s" in lines[-1]
