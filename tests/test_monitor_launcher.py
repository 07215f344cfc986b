"""`make monitor`'s own part, without Ray: the address it gives Prometheus, the scrape
configuration (checked by promtool), and its refusals before anything starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.settings import Settings
from launcher.monitor import monitor_config, prometheus_listen_address
from launcher.prometheus import RULES, binary, scrape_config
from launcher.sessionlogs import SERVICE_DISCOVERY_NAME

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("url", "listen"),
    [
        ("http://127.0.0.1:9090", ("127.0.0.1", 9090)),
        ("http://localhost:19090/", ("localhost", 19090)),
        ("http://[::1]:9091", ("::1", 9091)),
    ],
)
def test_the_dashboards_prometheus_url_is_where_prometheus_listens(
    url: str, listen: tuple[str, int]
) -> None:
    assert prometheus_listen_address(url) == listen


@pytest.mark.parametrize(
    "url",
    ["127.0.0.1:9090", "https://127.0.0.1:9090", "http://127.0.0.1", "http://h:99999",
     "http://h:9090/prom", "http://:9090", "", "http://h:90\udc80", "http://u:p@h:9090"],
)  # fmt: skip
def test_a_url_prometheus_cannot_listen_at_is_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(ValueError, match="RAY_PROMETHEUS_HOST"):
        prometheus_listen_address(url)


def _check_config(config: dict[str, object], tmp_path: Path) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))
    checked = subprocess.run(
        [str(binary("promtool")), "check", "config", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_scrape_config_follows_rays_discovery_file_and_loads_the_rules(
    tmp_path: Path,
) -> None:
    settings = Settings.from_env({"IMAGE_SERVICE_DATA_DIR": str(tmp_path)})
    config = monitor_config(settings)
    [job] = config["scrape_configs"]  # type: ignore[misc]
    assert job["file_sd_configs"][0]["files"] == [str(tmp_path / SERVICE_DISCOVERY_NAME)]
    assert config["rule_files"] == [str(RULES)]
    _check_config(config, tmp_path)


def test_without_the_dashboard_the_head_alone_is_scraped_and_the_user_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env(
        {"IMAGE_SERVICE_DATA_DIR": str(tmp_path), "IMAGE_SERVICE_INCLUDE_DASHBOARD": "0",
         "IMAGE_SERVICE_METRICS_PORT": "18080"}
    )  # fmt: skip
    config = monitor_config(settings)
    [job] = config["scrape_configs"]  # type: ignore[misc]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:18080"]}]
    assert "scrapes the head's metrics alone" in capsys.readouterr().err
    _check_config(config, tmp_path)


def test_scrape_interval_is_written_as_prometheus_reads_it() -> None:
    config = scrape_config(None, "h:1", 0.5)
    assert config["global"] == {"scrape_interval": "0.5s", "evaluation_interval": "0.5s"}


def _monitor(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher.monitor"],
        cwd=ROOT, capture_output=True, text=True, timeout=45, check=False,
        env={**os.environ, "IMAGE_SERVICE_DATA_DIR": str(tmp_path), **env},
    )  # fmt: skip


def _monitor_on_a_held_port(
    host: str, tmp_path: Path
) -> tuple[int, subprocess.CompletedProcess[str]]:
    """`make monitor` told to put Prometheus on a port of `host` that another socket holds."""
    with socket.socket() as holder:
        holder.bind((host, 0))
        holder.listen()
        port = holder.getsockname()[1]
        return port, _monitor({"RAY_PROMETHEUS_HOST": f"http://{host}:{port}"}, tmp_path)


def test_a_busy_prometheus_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    port, ran = _monitor_on_a_held_port("127.0.0.1", tmp_path)
    assert ran.returncode == 1
    assert f"port {port} on 127.0.0.1 (Prometheus) is already in use" in ran.stderr
    assert "RAY_PROMETHEUS_HOST" in ran.stderr
    assert not (tmp_path / "prometheus").exists()
    assert not (tmp_path / "ray-head.pgid").exists()


def test_a_bad_prometheus_url_exits_2_naming_it(tmp_path: Path) -> None:
    ran = _monitor({"RAY_PROMETHEUS_HOST": "prometheus:9090"}, tmp_path)
    assert ran.returncode == 2
    assert "RAY_PROMETHEUS_HOST='prometheus:9090'" in ran.stderr


def test_a_prometheus_that_cannot_start_stops_make_monitor_naming_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make monitor` starts Prometheus and goes on to the service without looking at it again:
    a Prometheus that exits at once (here its TSDB path is a file; likewise a port Ray took
    meanwhile, a data directory it cannot write) leaves the user told "prometheus at http://..."
    with nothing there, the Ray dashboard's charts empty and the alerts unevaluated, and the
    cause only in prometheus.log. It should wait for Prometheus to be ready and refuse
    otherwise, before the service starts."""
    from harness.service import free_port
    from launcher import monitor

    (tmp_path / "prometheus").mkdir()
    (tmp_path / "prometheus" / "data").write_text("not a directory\n")
    monkeypatch.setenv("IMAGE_SERVICE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RAY_PROMETHEUS_HOST", f"http://127.0.0.1:{free_port()}")
    started: list[bool] = []

    def service() -> None:  # stands for `make run`, which would run until Ctrl-C
        started.append(True)
        time.sleep(3)

    monkeypatch.setattr(monitor, "run_service", service)
    with pytest.raises(SystemExit) as exited:
        monitor.main()
    assert exited.value.code != 0
    assert not started, "the service ran with its Prometheus dead"
    assert "prometheus.log" in capsys.readouterr().err


def test_the_readme_tells_of_make_monitor_and_the_port_its_prometheus_takes() -> None:
    """`make monitor` is told of in the README, its modules in "Layout", and the listener it
    adds, Prometheus on RAY_PROMETHEUS_HOST (9090, no authentication), in the Security
    section's ports table, which lists what guards each port."""
    from harness.readme import section

    readme = (ROOT / "README.md").read_text()
    assert "make monitor" in readme
    layout = section(readme, "Layout")
    assert "`monitor.py`" in layout and "`prometheus.py`" in layout
    security = section(readme, "Security").splitlines()
    ports = [line for line in security if line.strip().startswith("| ")]
    assert any("RAY_PROMETHEUS_HOST" in line and "9090" in line for line in ports)


def test_prometheus_beyond_loopback_is_said_to_be_open(tmp_path: Path) -> None:
    # 0.0.0.0 with a port held: the warning comes before the refusal, and nothing starts.
    _port, ran = _monitor_on_a_held_port("0.0.0.0", tmp_path)
    assert ran.returncode == 1
    assert (
        "prometheus listens on 0.0.0.0, beyond this machine, with no authentication" in ran.stderr
    )
