"""Fixed paths under the data directory for what the Ray session `make run` started keeps in
its session directory: its logs, and the file listing its metrics endpoints for Prometheus.

Ray keeps both in the session directory, `/tmp/ray/session_<time>_<pid>`; `/tmp/ray/
session_latest` (and Ray's link `/tmp/ray/prom_metrics_service_discovery.json`) follow whichever
session started last, so a path through them breaks as soon as another Ray starts on the
machine. The links are replaced at each start.
"""

from __future__ import annotations

import os
from pathlib import Path

LINK_NAME = "logs"
# Written by the Ray dashboard's metrics module (`ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE`),
# so only while the dashboard runs.
SERVICE_DISCOVERY_NAME = "prom_metrics_service_discovery.json"


def link_logs(data_dir: Path, session_logs: Path) -> Path:
    """Point `data_dir/logs` at `session_logs` and return the link. A `logs` there that is
    not a link is the operator's own and stays: a FileExistsError says so."""
    return _link(data_dir / LINK_NAME, session_logs, target_is_directory=True)


def link_service_discovery(data_dir: Path, session_dir: Path) -> Path:
    """Point `data_dir/prom_metrics_service_discovery.json` at the session's file (which may not
    be written yet: Prometheus reads it again when it appears) and return the link."""
    return _link(data_dir / SERVICE_DISCOVERY_NAME, session_dir / SERVICE_DISCOVERY_NAME)


def _link(link: Path, target: Path, *, target_is_directory: bool = False) -> Path:
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} is not a link; move it to let the service link its own")
    # Made beside it and renamed over it, so the old link is never missing for a reader.
    staged = link.with_name(f".{link.name}.{os.getpid()}")
    staged.unlink(missing_ok=True)
    staged.symlink_to(target, target_is_directory=target_is_directory)
    os.replace(staged, link)
    return link
