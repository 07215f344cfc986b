"""The CI check of commit subjects (.ci/commit-subjects), run on a repository of its own."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "commit-subjects"


def _repository_with(tmp_path: Path, subjects: list[str]) -> Path:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for subject in subjects:
        git(
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            subject,
        )
    return tmp_path


def _check(repository: Path, *range_: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *range_], cwd=repository, capture_output=True, text=True, timeout=30
    )


def test_subjects_of_72_characters_pass_counted_as_characters_not_bytes(tmp_path: Path) -> None:
    repository = _repository_with(tmp_path, ["a" * 72, "é" * 72, "Fix it\n\n" + "body " * 40])
    result = _check(repository, "HEAD")
    assert result.returncode == 0, result.stderr


def test_a_subject_of_73_characters_fails_and_is_named(tmp_path: Path) -> None:
    repository = _repository_with(tmp_path, ["short", "b" * 73, "short again"])
    result = _check(repository, "HEAD")
    assert result.returncode == 1
    assert "b" * 73 in result.stderr
    assert "73 characters" in result.stderr


def test_this_repository_passes_since_the_rule_was_set() -> None:
    result = _check(SCRIPT.parents[1])
    assert result.returncode == 0, result.stderr
