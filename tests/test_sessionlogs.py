"""The data directory's link to the logs of the current Ray session."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.sessionlogs import link_logs

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
