"""The data directory's link to the logs of the current Ray session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from launcher.sessionlogs import link_logs, link_service_discovery

pytestmark = pytest.mark.timeout(30)


def _session(root: Path, name: str) -> Path:
    logs = root / name / "logs"
    logs.mkdir(parents=True)
    (logs / "worker-1.err").write_text(f'{{"message": "{name}"}}\n')
    return logs


def test_the_link_reaches_the_sessions_logs(tmp_path: Path) -> None:
    logs = _session(tmp_path, "session_a")
    data = tmp_path / "data"
    data.mkdir()
    link = link_logs(data, logs)
    assert link == data / "logs"
    assert (link / "worker-1.err").read_text() == '{"message": "session_a"}\n'


def test_a_new_session_moves_the_link(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    link_logs(data, _session(tmp_path, "session_a"))
    link = link_logs(data, _session(tmp_path, "session_b"))
    assert (link / "worker-1.err").read_text() == '{"message": "session_b"}\n'
    assert sorted(path.name for path in data.iterdir()) == ["logs"]  # nothing staged is left


def test_a_link_to_a_session_since_removed_is_replaced(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "logs").symlink_to(tmp_path / "gone")
    link = link_logs(data, _session(tmp_path, "session_c"))
    assert (link / "worker-1.err").exists()


def test_the_operators_own_logs_directory_stays(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    (data / "logs" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="is not a link"):
        link_logs(data, _session(tmp_path, "session_d"))
    assert (data / "logs" / "mine.txt").read_text() == "keep"


def test_prometheus_finds_the_sessions_endpoints_through_the_data_directory(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    session = tmp_path / "session_e"
    link = link_service_discovery(data, session)
    assert not link.exists()  # the dashboard writes it a moment later: the link waits for it
    session.mkdir()
    (session / "prom_metrics_service_discovery.json").write_text('[{"targets": ["a:1"]}]')
    assert json.loads(link.read_text()) == [{"targets": ["a:1"]}]
    link_service_discovery(data, tmp_path / "session_f")
    assert os.readlink(link) == str(tmp_path / "session_f" / link.name)
