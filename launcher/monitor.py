"""`make monitor` (`python -m launcher.monitor`): `make run` with a Prometheus beside it, its
rules loaded, and the Ray dashboard told where it is (`RAY_PROMETHEUS_HOST`).

Prometheus listens where `RAY_PROMETHEUS_HOST` says (default http://127.0.0.1:9090) and
keeps its data in the data directory's `prometheus/`. It scrapes every node through the
service discovery file the Ray dashboard keeps (linked into the data directory at start); with
the dashboard off, only the head's metrics endpoint. It is tied to this process as the Ray head
is: it stops when the service stops.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from urllib.parse import urlsplit

from core.settings import Settings
from launcher import EXIT_BAD_SETTING, EXIT_PORT_BUSY, die_with_parent, load_settings
from launcher import main as run_service
from launcher.ports import Listener, bind_error, refusal
from launcher.prometheus import Prometheus, PrometheusNotReady, scrape_config
from launcher.sessionlogs import SERVICE_DISCOVERY_NAME

PROMETHEUS_HOST_VARIABLE = "RAY_PROMETHEUS_HOST"
DEFAULT_PROMETHEUS_HOST = "http://127.0.0.1:9090"
SCRAPE_INTERVAL_SECONDS = 5.0
# It replays its write-ahead log first: seconds for a few days of one service's series.
READY_TIMEOUT_SECONDS = 60.0
EXIT_PROMETHEUS_FAILED = 1


def prometheus_listen_address(url: str) -> tuple[str, int]:
    """The host and port to listen on for the Prometheus URL the dashboard is given; a
    ValueError names what is wrong with it."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (
        parts.scheme != "http"
        or not parts.hostname
        or port is None
        or parts.path not in ("", "/")
        or parts.username is not None
    ):
        raise ValueError(
            f"{PROMETHEUS_HOST_VARIABLE}={url!r}: make monitor needs http://HOST:PORT "
            f"(the address its Prometheus listens on), e.g. {DEFAULT_PROMETHEUS_HOST}"
        )
    return parts.hostname, port


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def monitor_config(settings: Settings) -> dict[str, object]:
    if settings.include_dashboard:
        discovery = settings.data_dir / SERVICE_DISCOVERY_NAME
        return scrape_config(discovery, "", SCRAPE_INTERVAL_SECONDS)
    print(
        "the Ray dashboard is off (IMAGE_SERVICE_INCLUDE_DASHBOARD=0): Prometheus scrapes the "
        "head's metrics alone, not the nodes that join",
        file=sys.stderr,
        flush=True,
    )
    head = f"127.0.0.1:{settings.metrics_port}"
    return scrape_config(None, head, SCRAPE_INTERVAL_SECONDS)


def main() -> None:
    settings = load_settings()
    url = os.environ.setdefault(PROMETHEUS_HOST_VARIABLE, DEFAULT_PROMETHEUS_HOST)
    try:
        host, port = prometheus_listen_address(url)
    except ValueError as exc:
        print(exc, file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_SETTING) from None
    if not _loopback(host):
        warning = (
            f"prometheus listens on {host}, beyond this machine, with no authentication: "
            "anyone who reaches it can query every series"
        )
        print(warning, file=sys.stderr, flush=True)
    error = bind_error(host, port)
    if error is not None:
        print(refusal(Listener("Prometheus", host, port, PROMETHEUS_HOST_VARIABLE), error),
              file=sys.stderr, flush=True)  # fmt: skip
        raise SystemExit(EXIT_PORT_BUSY)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    prometheus = Prometheus(settings.data_dir / "prometheus", listen)
    # Started before the service replaces this process with itself (`launcher.main`); the
    # parent-death signal goes with the process, so Prometheus stops when the service does.
    process = prometheus.start(monitor_config(settings), preexec_fn=die_with_parent)
    try:
        prometheus.wait_ready(process, READY_TIMEOUT_SECONDS)
    except PrometheusNotReady as exc:
        if process.poll() is None:
            process.kill()
            process.wait()
        print(exc, file=sys.stderr, flush=True)
        raise SystemExit(EXIT_PROMETHEUS_FAILED) from None
    print(f"prometheus at {prometheus.url} (its log: {prometheus.home / 'prometheus.log'})",
          file=sys.stderr, flush=True)  # fmt: skip
    run_service()


if __name__ == "__main__":
    main()
