"""`python -m launcher` (what `make run` runs) refusing to start: a setting it cannot use, a
port another process holds. Both refusals come before Ray starts, so no cluster is needed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.service import ROOT, free_port

pytestmark = pytest.mark.timeout(120)


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


def test_a_busy_ray_port_is_refused(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = _launch({"IMAGE_SERVICE_RAY_PORT": str(port)}, tmp_path / "data")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].endswith("move it with IMAGE_SERVICE_RAY_PORT")
    assert not (tmp_path / "data").exists()
