"""`imgjobs` against a stand-in service on 127.0.0.1: results paging under a lower page cap,
polls that ride out transient trouble, and the mode of files written with -o. No Ray."""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from core.errors import InvalidSubmission
from core.submission import SubmissionLimits, validate_submission
from imgjobs.api import Patience, ServiceClient, ServiceError
from imgjobs.cli import follow, main, output
from imgjobs.jobfile import load_job_file

JOB_ID = 7
DROP = "drop"  # an answer that closes the connection without a word
SLOW = "slow"  # an answer that comes after the client has stopped waiting

Answer = tuple[int, Any] | str
Route = Callable[[dict[str, str]], Answer]


class FakeService:
    """Answers each request by `routes[(method, path)](query)` and records what was asked, and
    with which headers."""

    def __init__(self, routes: Mapping[tuple[str, str], Route]) -> None:
        self.routes = routes
        self.asked: list[tuple[str, str, dict[str, str]]] = []
        self.headers: list[dict[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.handle_error = lambda *_: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._answer("POST")

            def _answer(self, method: str) -> None:
                parts = urlsplit(self.path)
                query = dict(parse_qsl(parts.query))
                service.asked.append((method, parts.path, query))
                service.headers.append(dict(self.headers.items()))
                answer = service.routes[(method, parts.path)](query)
                if isinstance(answer, str):
                    if answer == SLOW:  # waits on an Event: some tests replace time.sleep
                        threading.Event().wait(5.0)
                    return  # HTTP/1.0: the server closes the connection, nothing sent
                status, body = answer
                data = json.dumps(body).encode() if body is not None else b"<html>bad gateway"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> FakeService:
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def detail(settled: int, total: int = 4) -> tuple[int, dict[str, Any]]:
    status = "completed" if settled == total else "ongoing"
    return 200, {
        "job_id": JOB_ID,
        "status": status,
        "total": total,
        "done": settled,
        "failed": 0,
        "in_flight": 0,
        "queued": total - settled,
        "created_at": "2025-03-11T10:00:00",
        "started_at": None,
        "finished_at": None,
        "cancelled_at": None,
        "errors": [],
    }


def scripted(*answers: Answer) -> Route:
    """A route that gives these answers in turn, one per request."""
    left: Iterator[Answer] = iter(answers)
    return lambda _query: next(left)


def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "visits.csv"
    path.write_text("S1,2025-03-11,http://img.test/1.jpg\n")
    return path


# ---- results: the server's page cap ----------------------------------------------------------


def capped_results(rows: list[dict[str, Any]], page_max: int) -> Route:
    """GET /api/results as the service answers it with IMAGE_SERVICE_RESULTS_PAGE_MAX set."""

    def answer(query: dict[str, str]) -> Answer:
        offset, limit = int(query["offset"]), int(query["limit"])
        if not 1 <= limit <= page_max:
            return 400, {"error": f"limit must be between 1 and {page_max}"}
        page = rows[offset : offset + limit]
        end = offset + len(page)
        return 200, {
            "job_id": JOB_ID,
            "total": len(rows),
            "offset": offset,
            "limit": limit,
            "next_offset": end if end < len(rows) else None,
            "results": page,
        }

    return answer


def test_results_shrink_the_page_to_the_servers_cap_and_keep_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [{"store_id": "S1", "image_url": f"http://img.test/{i}.jpg"} for i in range(10)]
    routes = {
        ("GET", f"/api/jobs/{JOB_ID}"): lambda _q: detail(4),
        ("GET", "/api/results"): capped_results(rows, page_max=3),
    }
    with FakeService(routes) as service:
        code = main(["--url", service.url, "results", str(JOB_ID), "--format", "json"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out) == rows  # each row once, in order
    pages = [
        (int(q["offset"]), int(q["limit"])) for _, path, q in service.asked if "results" in path
    ]
    assert pages == [(0, 1000), (0, 3), (3, 3), (6, 3), (9, 3)]


def test_results_give_up_when_the_named_cap_would_not_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    routes = {
        ("GET", f"/api/jobs/{JOB_ID}"): lambda _q: detail(4),
        ("GET", "/api/results"): lambda _q: (400, {"error": "limit must be between 1 and 5000"}),
    }
    with FakeService(routes) as service:
        code = main(["--url", service.url, "results", str(JOB_ID)])
    assert code == 2
    assert capsys.readouterr().err == (
        "imgjobs: error: limit must be between 1 and 5000 (HTTP 400)\n"
    )
    assert [path for _, path, _ in service.asked].count("/api/results") == 1


# ---- polls: transient trouble ----------------------------------------------------------------


def sleeps_of_this_thread(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Replace time.sleep; record the test thread's sleeps. Threads other tests left running
    keep sleeping for real, and out of the record."""
    waits: list[float] = []
    test_thread, real_sleep = threading.current_thread(), time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread() is test_thread:
            waits.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    return waits


@pytest.mark.parametrize("chosen", [[], ["--idempotency-key", "visits-2025-03-11"]])
def test_submit_retries_with_one_idempotency_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    chosen: list[str],
) -> None:
    # A dropped connection and a 503 may each hide a job already recorded: every retry carries
    # the first attempt's key, so the service answers it with that job. Broken by a key made
    # per attempt, or by a submit that gives up on either answer.
    monkeypatch.setattr(time, "sleep", lambda _seconds: None)  # the waits between attempts
    submits = scripted(DROP, (503, {"error": "busy"}), (201, {"job_id": JOB_ID}))
    with FakeService({("POST", "/api/submit/"): submits}) as service:
        code = main(["--url", service.url, "submit", str(job_file(tmp_path)), *chosen])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out == f"{JOB_ID}\n"
    keys = [headers.get("Idempotency-Key") for headers in service.headers]
    key = chosen[1] if chosen else keys[0]
    assert key and keys == [key] * 3


def test_submit_wait_rides_out_a_dropped_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = {
        ("POST", "/api/submit/"): lambda _q: (201, {"job_id": JOB_ID}),
        ("GET", f"/api/jobs/{JOB_ID}"): scripted(detail(0), DROP, detail(2), detail(4)),
    }
    with FakeService(routes) as service:
        code = main(
            ["--url", service.url, "submit", str(job_file(tmp_path)), "--wait", "--interval", "0"]
        )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out == f"{JOB_ID}\n"
    assert f"job {JOB_ID} completed: 4 images, 4 done, 0 failed" in captured.err


def test_follow_retries_gateway_answers_and_timeouts_with_growing_delays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits = sleeps_of_this_thread(monkeypatch)
    answers = scripted(
        detail(0), (503, {"error": "no replica ready"}), (502, None), SLOW, (504, None), detail(4)
    )
    # A timeout well above a loaded machine's answer time, well below the slow answer's 5 s.
    patience = Patience(give_up_after=30, first_delay=0.1, max_delay=0.3, request_timeout=1.5)
    with FakeService({("GET", f"/api/jobs/{JOB_ID}"): answers}) as service:
        final = follow(ServiceClient(service.url), JOB_ID, 0.0, io.StringIO(), patience=patience)
    assert final["status"] == "completed"
    assert waits == [0.0, 0.1, 0.2, 0.3, 0.3]  # the poll interval, then the backoff


def test_a_good_poll_resets_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    waits = sleeps_of_this_thread(monkeypatch)
    answers = scripted(detail(0), DROP, DROP, detail(1), DROP, detail(4))
    patience = Patience(give_up_after=30, first_delay=0.1, max_delay=5)
    with FakeService({("GET", f"/api/jobs/{JOB_ID}"): answers}) as service:
        follow(ServiceClient(service.url), JOB_ID, 1.0, io.StringIO(), patience=patience)
    assert waits == [1.0, 0.1, 0.2, 1.0, 0.1]


def test_submit_wait_gives_up_after_the_service_stays_away(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = {
        ("POST", "/api/submit/"): lambda _q: (201, {"job_id": JOB_ID}),
        ("GET", f"/api/jobs/{JOB_ID}"): lambda _q: (503, {"error": "no replica ready"}),
    }
    args = ["submit", str(job_file(tmp_path)), "--wait", "--give-up-after", "0.3"]
    started = time.monotonic()
    with FakeService(routes) as service:
        code = main(["--url", service.url, *args])
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("imgjobs: error: the service has been unavailable for 0.3 s")
    assert err.endswith("last error: no replica ready (HTTP 503)\n") and err.count("\n") == 1
    assert 0.3 <= took < 5


def test_a_poll_that_is_not_transient_fails_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    routes = {("GET", f"/api/jobs/{JOB_ID}"): scripted(detail(0), (404, {"error": "no job 7"}))}
    patience = Patience(give_up_after=30, first_delay=5)
    with FakeService(routes) as service:
        client = ServiceClient(service.url)
        started = time.monotonic()
        with pytest.raises(ServiceError, match="no job 7"):
            follow(client, JOB_ID, 0.0, io.StringIO(), patience=patience)
    assert time.monotonic() - started < 4  # no backoff wait for a 404


# ---- -o: the written file's mode --------------------------------------------------------------


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """`os.umask` for one test; the process umask is put back after."""
    before = os.umask(0o022)
    os.umask(before)
    yield os.umask
    os.umask(before)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_output_file_gets_the_mode_of_a_new_file(
    tmp_path: Path, umask: Callable[[int], int], mask: int, mode: int
) -> None:
    umask(mask)
    path = tmp_path / "results.csv"
    with output(path) as out:
        out.write("a,b\n")
    assert path.read_text() == "a,b\n"
    assert path.stat().st_mode & 0o7777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_output_file_keeps_the_mode_of_the_file_it_replaces(
    tmp_path: Path, umask: Callable[[int], int]
) -> None:
    umask(0o022)
    path = tmp_path / "results.csv"
    path.write_text("old\n")
    path.chmod(0o600)  # someone kept these results private; a rewrite must not open them up
    with output(path) as out:
        out.write("new\n")
    assert path.read_text() == "new\n"
    assert path.stat().st_mode & 0o7777 == 0o600


def test_output_file_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    with pytest.raises(RuntimeError), output(path) as out:
        out.write("half")
        raise RuntimeError("the service went away mid-stream")
    assert list(tmp_path.iterdir()) == []


# ---- wait: following a job already submitted -------------------------------------------------


def ended(status: str, done: int, failed: int, stores: int = 0) -> tuple[int, dict[str, Any]]:
    """A job's detail once it has ended, with `stores` failing stores."""
    _, body = detail(done + failed, total=done + failed)
    errors = [{"store_id": f"S{i:04d}", "error": "image download failed"} for i in range(stores)]
    body.update(status=status, done=done, failed=failed, queued=0, errors=errors)
    return 200, body


def timeless(progress: str) -> str:
    """Progress output without its rate and ETA, which depend on the wall clock."""
    return re.sub(r"[\d.]+ img/s  ETA [\d:]+", "RATE  ETA", progress)


def run(
    capsys: pytest.CaptureFixture[str], service: FakeService, *args: str
) -> tuple[int, str, str]:
    """`imgjobs --url <service> args...`: exit code, stdout, stderr."""
    code = main(["--url", service.url, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("final", "code"),
    [(ended("completed", 4, 0), 0), (ended("failed", 3, 1, 1), 1), (ended("cancelled", 1, 3), 1)],
)
def test_wait_follows_a_submitted_job_as_submit_wait_does(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    final: tuple[int, dict[str, Any]],
    code: int,
) -> None:
    # One job's polls answered twice over: `wait` must print what `submit --wait` prints, after
    # the job id, and exit as it does. Broken by a `wait` with a summary or exit code of its own.
    polls = [detail(0), detail(2), final]
    routes = {
        ("POST", "/api/submit/"): lambda _q: (201, {"job_id": JOB_ID}),
        ("GET", f"/api/jobs/{JOB_ID}"): scripted(*polls, *polls),
    }
    with FakeService(routes) as service:
        submitted = run(
            capsys, service, "submit", str(job_file(tmp_path)), "--wait", "--interval", "0"
        )
        waited = run(capsys, service, "wait", str(JOB_ID), "--interval", "0")
    assert (submitted[0], submitted[1], timeless(submitted[2])) == (
        code,
        f"{JOB_ID}\n",
        timeless(waited[2]),
    )
    assert waited[:2] == (code, "")
    body = final[1]
    assert waited[2].splitlines()[2:] == [
        f"job {JOB_ID} {body['status']}: 4 images, {body['done']} done, {body['failed']} failed",
        *store_lines(len(body["errors"])),
    ]


def test_wait_for_an_unknown_job_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    routes = {("GET", f"/api/jobs/{JOB_ID}"): lambda _q: (404, {"error": f"no job {JOB_ID}"})}
    with FakeService(routes) as service:
        assert run(capsys, service, "wait", str(JOB_ID)) == (
            2,
            "",
            f"imgjobs: error: no job {JOB_ID} (HTTP 404)\n",
        )


@pytest.mark.parametrize("command", [["wait", str(JOB_ID)], ["submit", "FILE", "--wait"]])
def test_ctrl_c_while_following_suggests_wait_not_status(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    # Ctrl-C lands in the sleep between polls. The hint must name the command that follows the
    # job again (`status` checks once).
    test_thread, real_sleep = threading.current_thread(), time.sleep

    def interrupted(seconds: float) -> None:
        if threading.current_thread() is not test_thread:
            return real_sleep(seconds)  # other threads of this process sleep on
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupted)
    args = [str(job_file(tmp_path)) if arg == "FILE" else arg for arg in command]
    routes = {
        ("POST", "/api/submit/"): lambda _q: (201, {"job_id": JOB_ID}),
        ("GET", f"/api/jobs/{JOB_ID}"): lambda _q: detail(1),
    }
    with FakeService(routes) as service:
        code, _out, err = run(capsys, service, *args)
    assert code == 130
    assert err.endswith(
        f"\nimgjobs: stopped following job {JOB_ID}; it goes on"
        f" (imgjobs wait {JOB_ID} to follow it again, imgjobs cancel {JOB_ID} to stop it)\n"
    )
    assert "imgjobs status" not in err


# ---- failing stores: the first ten, then how many more ---------------------------------------


def store_lines(stores: int) -> list[str]:
    return [f"  S{i:04d}: image download failed" for i in range(stores)]


@pytest.mark.parametrize(
    ("stores", "shown"),
    [
        (0, []),
        (10, store_lines(10)),
        (11, [*store_lines(10), "  ... and 1 more (--all lists them)"]),
        (1000, [*store_lines(10), "  ... and 990 more (--all lists them)"]),
    ],
)
def test_status_and_wait_show_the_first_ten_failing_stores(
    capsys: pytest.CaptureFixture[str], stores: int, shown: list[str]
) -> None:
    final = ended("failed", 0, stores, stores)
    with FakeService({("GET", f"/api/jobs/{JOB_ID}"): lambda _q: final}) as service:
        status_code, status_out, _ = run(capsys, service, "status", str(JOB_ID))
        wait_code, _, wait_err = run(capsys, service, "wait", str(JOB_ID))
        all_code, all_out, _ = run(capsys, service, "status", str(JOB_ID), "--all")
        waited_all = run(capsys, service, "wait", str(JOB_ID), "--all")
    assert (status_code, wait_code, all_code, waited_all[0]) == (0, 1, 0, 1)
    # status: a counts line and a creation time first; the wait summary: its one line first
    assert status_out.splitlines()[2:] == shown
    assert wait_err.splitlines()[2:] == shown
    assert all_out.splitlines()[2:] == store_lines(stores)
    assert waited_all[2].splitlines()[2:] == store_lines(stores)


# ---- cancel: an ended job has its own exit code ----------------------------------------------


@pytest.mark.parametrize(
    ("answer", "code", "err"),
    [
        ((409, {"error": f"job {JOB_ID} has already completed"}), 3,
         f"imgjobs: job {JOB_ID} has already completed; nothing to cancel\n"),
        ((404, {"error": f"no job {JOB_ID}"}), 2, f"imgjobs: error: no job {JOB_ID} (HTTP 404)\n"),
        ((503, {"error": "busy"}), 2, "imgjobs: error: busy (HTTP 503)\n"),
    ],
)  # fmt: skip
def test_cancel_of_an_ended_job_exits_3_other_refusals_2(
    capsys: pytest.CaptureFixture[str], answer: Answer, code: int, err: str
) -> None:
    with FakeService({("POST", f"/api/jobs/{JOB_ID}/cancel"): lambda _q: answer}) as service:
        assert run(capsys, service, "cancel", str(JOB_ID)) == (code, "", err)


def test_cancel_of_a_running_job_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    _, body = detail(1)
    body.update(status="cancelling", failed=2, in_flight=1, queued=0)
    with FakeService({("POST", f"/api/jobs/{JOB_ID}/cancel"): lambda _q: (202, body)}) as service:
        assert run(capsys, service, "cancel", str(JOB_ID)) == (
            0, f"job {JOB_ID} cancelling: 2 images dropped or failed, 1 in flight finishing\n", ""
        )  # fmt: skip


# ---- the rate counts processed images, not the ones a cancel dropped --------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def progress(status: str, done: int, failed: int, in_flight: int, queued: int) -> Answer:
    _, body = detail(0, total=1000)
    body.update(status=status, done=done, failed=failed, in_flight=in_flight, queued=queued)
    return 200, body


def test_the_rate_of_a_cancelled_job_leaves_out_its_dropped_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 1,000 images; after a second 102 are processed (2 failed), 64 in flight, 834 queued. The
    # cancel drops the 834 (they count as failed); the 64 in flight finish. 166 images were
    # processed in 3 s: 55.3 img/s and 17%, where counting the dropped ones said 333.3 and 100%.
    monkeypatch.setattr(time, "sleep", lambda _seconds: None)
    polls = scripted(
        progress("ongoing", 0, 0, 64, 936),
        progress("ongoing", 100, 2, 64, 834),
        progress("cancelling", 142, 838, 20, 0),
        progress("cancelled", 160, 840, 0, 0),
    )
    ticks = iter([0.0, 1.0, 2.0, 3.0])
    out = Terminal()  # a line per poll
    with FakeService({("GET", f"/api/jobs/{JOB_ID}"): polls}) as service:
        follow(ServiceClient(service.url), JOB_ID, 0.0, out, lambda: next(ticks))
    lines = out.getvalue().rstrip("\n").split("\r")[1:]
    assert [line.split("] ")[1].rstrip() for line in lines] == [
        "0/1000   0%  - img/s  ETA -  failed 0  ongoing",
        "102/1000  10%  102.0 img/s  ETA 0:09  failed 2  ongoing",
        "146/1000  15%  73.0 img/s  ETA 0:00  failed 838  cancelling",
        "166/1000  17%  55.3 img/s  ETA 0:00  failed 840  cancelled",
    ]


def test_a_job_first_seen_cancelled_counts_its_failures_as_dropped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `imgjobs wait` after the cancel: no poll saw the queue before it, so the failures cannot be
    # told from the dropped images; the bar shows what was done, not 100%.
    with FakeService(
        {("GET", f"/api/jobs/{JOB_ID}"): lambda _q: ended("cancelled", 329, 671)}
    ) as service:
        code, _, err = run(capsys, service, "wait", str(JOB_ID))
    assert code == 1
    assert err.splitlines()[0].split("] ")[1] == (
        "329/1000  33%  - img/s  ETA -  failed 671  cancelled"
    )


# ---- a CSV job file: errors name the line --------------------------------------------------


def refused_as_the_service_would(payload: dict[str, Any]) -> Answer:
    """The 400 the service answers for this body: its own validation's message."""
    limits = SubmissionLimits(
        max_images=100_000, max_url_length=2048, max_store_id_length=256, max_visit_time_length=64
    )
    try:
        validate_submission(payload, limits)
    except InvalidSubmission as exc:
        return 400, {"error": str(exc)}
    return 201, {"job_id": JOB_ID}


def deep_csv(bad_line: int, bad_row: str, lines: int = 3000) -> str:
    """A header, then rows of 50 stores in turn (so visits interleave and a visit's index is
    far from its line), with `bad_row` on line `bad_line` and a blank line on line 10."""
    rows = ["store_id,visit_time,image_url"]
    for line in range(2, lines + 1):
        if line == bad_line:
            rows.append(bad_row)
        elif line == 10:
            rows.append("")
        else:
            rows.append(f"S{line % 50:03d},2025-03-11,http://img.test/{line}.jpg")
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ("S007,2025-03-11,ftp://img.test/x.jpg",
         "column 3 (image_url): must be an absolute http(s) URL"),
        ("S999,2025-13-45,http://img.test/x.jpg",
         "column 2 (visit_time): must be an ISO 8601 date or date-time"),
        (",2025-03-11,http://img.test/x.jpg", "column 1 (store_id): must be a non-empty string"),
    ],
)  # fmt: skip
def test_a_csv_submission_refused_names_the_csv_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_row: str, message: str
) -> None:
    # Line 2,345 of 3,000: S007's visit is the 6th and this its 48th image (`visits[5].image_url
    # [47]`), or a visit of its own, the 51st: the service names the body, the user wrote lines.
    path = tmp_path / "visits.csv"
    path.write_text(deep_csv(2345, bad_row))
    payload = load_job_file(path).payload
    answer = refused_as_the_service_would(payload)
    assert isinstance(answer, tuple) and answer[0] == 400 and "visits[" in answer[1]["error"]
    routes = {("POST", "/api/submit/"): lambda _q: answer}
    with FakeService(routes) as service:
        code, out, err = run(capsys, service, "submit", str(path))
    assert (code, out) == (2, "")
    assert err == f"imgjobs: error: {path} line 2345, {message} (HTTP 400)\n"


def test_a_json_submission_refused_keeps_the_json_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "visits.json"
    path.write_text(json.dumps({"count": 1, "visits": [{"store_id": "S1"}]}))
    answer = refused_as_the_service_would(json.loads(path.read_text()))
    with FakeService({("POST", "/api/submit/"): lambda _q: answer}) as service:
        code, _, err = run(capsys, service, "submit", str(path))
    assert (code, err) == (2, "imgjobs: error: visits[0].image_url is missing (HTTP 400)\n")
