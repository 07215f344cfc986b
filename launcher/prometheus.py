"""A Prometheus beside the service: where `make prometheus` unpacked Debian's package
(.tools/prometheus), the scrape configuration for a Ray cluster, and the process itself.

Ray's dashboard keeps a file listing every node's metrics endpoint (Prometheus file-based
service discovery); without the dashboard there is no such file and only the head's own
endpoint can be named.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".tools" / "prometheus"
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "rules.yaml"
WEB_ASSETS = TOOLS / "usr" / "share" / "prometheus" / "web"
JOB_NAME = "ray"


class PrometheusNotReady(RuntimeError):
    pass


def binary(name: str) -> Path:
    """`prometheus` or `promtool`, as `make prometheus` unpacked it."""
    path = TOOLS / "usr" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make prometheus` first")
    return path


def scrape_config(
    discovery_file: Path | None, head_target: str, interval_seconds: float
) -> dict[str, Any]:
    """Prometheus' configuration: every node Ray's service discovery file lists, or, with none,
    the head's metrics endpoint alone; the project's rules loaded."""
    interval = f"{interval_seconds:g}s"
    job: dict[str, Any] = {"job_name": JOB_NAME}
    if discovery_file is not None:
        job["file_sd_configs"] = [{"files": [str(discovery_file)], "refresh_interval": interval}]
    else:
        job["static_configs"] = [{"targets": [head_target]}]
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(RULES)],
        "scrape_configs": [job],
    }


@dataclass(frozen=True)
class Prometheus:
    """One Prometheus server, its configuration and data in `home`."""

    home: Path
    listen: str  # host:port

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def command(self) -> list[str]:
        return [
            str(binary("prometheus")),
            f"--config.file={self.home / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.home / 'data'}",
            f"--web.listen-address={self.listen}",
            f"--web.local-assets={WEB_ASSETS}",
            "--storage.tsdb.retention.time=7d",
        ]

    def start(
        self, config: dict[str, Any], preexec_fn: Callable[[], None] | None = None
    ) -> subprocess.Popen[bytes]:
        """Write `config` (JSON is YAML) and start the server; its output goes to
        `home/prometheus.log`."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "prometheus.yml").write_text(json.dumps(config, indent=2) + "\n")
        with open(self.home / "prometheus.log", "ab") as log_file:
            return subprocess.Popen(
                self.command(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=preexec_fn,
            )

    def wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        """Return once the server answers `/-/ready`; a PrometheusNotReady, naming its log,
        when it exits first or is not ready within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        log = self.home / "prometheus.log"
        while process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise PrometheusNotReady(
                    f"prometheus was not ready within {timeout:g} s; see {log}"
                )
            time.sleep(0.2)
        raise PrometheusNotReady(f"prometheus exited with code {process.returncode}; see {log}")
