"""`python -m launcher` (what `make run` runs) refusing to start: a setting it cannot use, a
port another process holds; both refusals come before Ray starts, so no cluster is needed.
Then, against one running service (`cluster`): a second launcher on its ports is refused and
leaves it answering alone, every socket it listens on is loopback as the README's Security
table says, and the log directory it prints holds the tracker's JSON lines."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.client import Client, job
from harness.imageserver import ImageServer
from harness.procs import descendants
from harness.service import ROOT, ServiceProcess, free_port
from harness.sockets import listening_sockets

pytestmark = pytest.mark.timeout(300)


def _launch(env: dict[str, str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    environ = {
        name: value for name, value in os.environ.items() if not name.startswith("IMAGE_SERVICE_")
    }
    environ.update(
        IMAGE_SERVICE_DATA_DIR=str(data_dir),
        IMAGE_SERVICE_PORT=str(free_port()),
        IMAGE_SERVICE_RAY_PORT=str(free_port()),
        IMAGE_SERVICE_METRICS_PORT=str(free_port()),
        IMAGE_SERVICE_DASHBOARD_PORT=str(free_port()),
    )
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "launcher"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=90,
        start_new_session=True,
    )


@pytest.mark.cluster  # runs the launcher: seconds each, kept out of `make unit`
@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORT", "abc", "IMAGE_SERVICE_PORT: input should be a valid integer, unable to parse "
         "string as an integer, got 'abc'"),
        ("CONCURRENCY", "0", "IMAGE_SERVICE_CONCURRENCY: input should be greater than or equal "
         "to 1, got '0'"),
        ("GPU_DELAY", "0.4-0.1", "IMAGE_SERVICE_GPU_DELAY must satisfy 0 <= low <= high <= "
         "86400, got '0.4-0.1'"),
    ],
)  # fmt: skip
def test_a_bad_setting_prints_its_message_alone_and_exits_2(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    done = _launch({f"IMAGE_SERVICE_{name}": value}, tmp_path / "data")
    assert (done.returncode, done.stderr, done.stdout) == (2, message + "\n", "")
    assert not (tmp_path / "data").exists()


@pytest.mark.cluster  # runs the launcher: seconds each, kept out of `make unit`
def test_a_busy_http_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as held:
        # As Serve's proxy listens: a second one with SO_REUSEPORT would have shared the port.
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = _launch({"IMAGE_SERVICE_PORT": str(port)}, tmp_path / "data")
    assert (done.returncode, done.stderr) == (
        1,
        f"port {port} on 127.0.0.1 (HTTP API) is already in use (another `make run`?); "
        "move it with IMAGE_SERVICE_PORT\n",
    )
    assert "READY" not in done.stdout
    # Ray was never started: its log and process group file would be in the data directory.
    assert not (tmp_path / "data").exists()


@pytest.mark.cluster  # runs the launcher: seconds each, kept out of `make unit`
def test_a_busy_ray_port_is_refused(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = _launch({"IMAGE_SERVICE_RAY_PORT": str(port)}, tmp_path / "data")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].endswith("move it with IMAGE_SERVICE_RAY_PORT")
    assert not (tmp_path / "data").exists()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    # The dashboard on too: its ports are in the table.
    service = ServiceProcess(
        data_dir=tmp_path_factory.mktemp("launcher"),
        env_overrides={
            "IMAGE_SERVICE_INCLUDE_DASHBOARD": "1",
            "IMAGE_SERVICE_DASHBOARD_PORT": str(free_port()),
        },
    ).start()
    yield service
    service.stop()


def _jobs_total(service: ServiceProcess) -> int:
    response = requests.get(f"{service.url}/api/jobs", timeout=30)
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


@pytest.mark.cluster
def test_a_second_launcher_on_the_same_ports_is_refused_and_the_first_answers_alone(
    running: ServiceProcess, image_server: ImageServer
) -> None:
    Client(running.url).submit_ok(job(("S00339218", [image_server.url("/img/red.jpg")])))
    total = _jobs_total(running)
    assert total >= 1  # a second service would answer 0
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "launcher"],
        cwd=ROOT,
        env=running.environment(),
        capture_output=True,
        text=True,
        timeout=90,
        start_new_session=True,
    )
    assert second.returncode == 1, second.stderr
    assert second.stderr == (
        f"port {running.port} on 127.0.0.1 (HTTP API) is already in use (another `make run`?); "
        "move it with IMAGE_SERVICE_PORT\n"
    )
    assert "READY" not in second.stdout
    assert time.monotonic() - started < 60  # no Ray started and waited for
    # Served by the first alone: the same total every time (Serve's proxy shares a port with
    # SO_REUSEPORT, so a second proxy would have answered some of these with its own 0).
    assert [_jobs_total(running) for _ in range(12)] == [total] * 12


# The README's Security table, with IMAGE_SERVICE_HOST=127.0.0.1 and the fast ingress off:
# the API and the dashboard listen on loopback only; Ray's other ports on all interfaces (or the
# machine's address), which Ray gives no way to narrow.
@pytest.mark.cluster
def test_the_service_listens_where_the_security_table_says(
    running: ServiceProcess, image_server: ImageServer
) -> None:
    assert running.process is not None
    # Serve's proxy, the tracker and the image workers are all up once a job has gone through.
    client = Client(running.url)
    client.wait(client.submit_ok(job(("S00339218", [image_server.url("/img/red.jpg")]))))
    sockets = listening_sockets(descendants([running.process.pid, running.ray_head_pgid()]))
    dashboard_port = int(running.env_overrides["IMAGE_SERVICE_DASHBOARD_PORT"])
    by_port = {port: [s for s in sockets if s.port == port] for port in {s.port for s in sockets}}
    for port in (running.port, dashboard_port):
        assert by_port.get(port) and all(s.loopback_only for s in by_port[port]), sockets
    beyond = [s for s in sockets if not s.loopback_only]
    assert {s.port for s in beyond}.isdisjoint({running.port, dashboard_port})
    # Each open port is Ray's own (its C++ servers, its workers and agents); nothing of ours.
    assert {s.command for s in beyond} <= {"gcs_server", "raylet", "python"} | {
        s.command for s in beyond if s.command.startswith("ray::")
    }, beyond
    # What the table says cannot be narrowed: if one day it is, the table must change too.
    metrics = by_port.get(running.metrics_port, [])
    assert metrics and not any(s.loopback_only for s in metrics), sockets
    gcs = by_port.get(running.ray_port, [])
    assert gcs and not any(s.loopback_only for s in gcs), sockets


LOG_LINE = re.compile(r"ray session logs \(JSON lines in worker-\*\.err\) in (\S+)")


@pytest.mark.cluster
def test_the_printed_log_directory_holds_the_trackers_json_lines(
    running: ServiceProcess, image_server: ImageServer
) -> None:
    client = Client(running.url)
    job_id = client.submit_ok(job(("S00339218", [image_server.url("/img/green.png")])))
    client.wait(job_id)
    [printed] = LOG_LINE.findall((running.data_dir / "service.log").read_text())
    logs = Path(printed)
    assert logs.is_dir()
    assert (running.data_dir / "logs").resolve() == logs.resolve()
    deadline = time.monotonic() + 30
    while True:  # Ray's log files are written as the worker flushes its stderr
        lines = [
            json.loads(line)
            for path in sorted((running.data_dir / "logs").glob("worker-*.err"))
            for line in path.read_text(errors="replace").splitlines()
            if line.startswith("{") and f'"job_id": {job_id}' in line
        ]
        messages = {line["message"] for line in lines if line["logger"] == "actors.tracker"}
        if {"job recorded", "job finished"} <= messages or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {"job recorded", "job finished"} <= messages, lines
