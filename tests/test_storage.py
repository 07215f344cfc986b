from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from core.models import ImageOutcome, JobStatus, JobSubmission, StoreError, Visit
from core.storage import JobStore, StorageError


def submission() -> JobSubmission:
    return JobSubmission(
        visits=(
            Visit("S1", "2025-01-01", ("http://a.test/1", "http://a.test/2")),
            Visit("S2", "2025-01-02", ("http://a.test/3",)),
        )
    )


def done(job_id: int, index: int, size: int = 10) -> ImageOutcome:
    return ImageOutcome(job_id, index, processed_at=1.0, width=size, height=size)


def test_job_ids_increase_and_survive_reopening(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3")
    first, _ = store.create_job(submission(), "k1", {})
    second, _ = store.create_job(submission(), "k2", {})
    store.close()
    reopened = JobStore(tmp_path / "db.sqlite3")
    third, _ = reopened.create_job(submission(), "k3", {})
    assert first < second < third


def test_same_submission_key_returns_the_same_job(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3")
    job_id, created = store.create_job(submission(), "key", {})
    again, created_again = store.create_job(submission(), "key", {})
    assert (again, created, created_again) == (job_id, True, False)


def test_a_result_is_kept_once_first_write_wins(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3")
    job_id, _ = store.create_job(submission(), None, {})
    store.save_outcomes([done(job_id, 0, 10)], [])
    store.save_outcomes([done(job_id, 0, 99), done(job_id, 1), done(job_id, 2)], [job_id])
    total, rows = store.results_page(job_id, 0, 10)
    assert total == 3 and [r.width for r in rows] == [10, 10, 10]
    assert store.job_view(job_id).status is JobStatus.COMPLETED  # type: ignore[union-attr]


def test_finished_job_lists_first_failure_per_store_in_image_order(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3")
    job_id, _ = store.create_job(submission(), None, {2: "store_id not in store master"})
    store.save_outcomes(
        [
            ImageOutcome(job_id, 1, 1.0, error="second failure"),
            ImageOutcome(job_id, 0, 1.0, error="first failure"),
        ],
        [job_id],
    )
    view = store.job_view(job_id)
    assert view is not None and view.status is JobStatus.FAILED
    assert view.errors == (
        StoreError("S1", "first failure"),
        StoreError("S2", "store_id not in store master"),
    )


def test_all_images_failed_at_submission_finishes_the_job_at_once(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3")
    job_id, _ = store.create_job(submission(), None, {0: "x", 1: "x", 2: "y"})
    assert store.job_view(job_id).status is JobStatus.FAILED  # type: ignore[union-attr]
    assert store.unfinished_jobs() == []


def test_unfinished_jobs_know_what_is_settled(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3")
    job_id, _ = store.create_job(submission(), None, {})
    store.save_outcomes([done(job_id, 1)], [])
    [unfinished] = store.unfinished_jobs()
    assert unfinished.job_id == job_id and unfinished.settled == {1}
    assert [image.url for image in unfinished.images] == [
        "http://a.test/1", "http://a.test/2", "http://a.test/3",
    ]  # fmt: skip


def test_failed_write_leaves_no_half_recorded_job(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3")
    # A trigger that fails on the last image insert stands in for a full disk mid-transaction.
    store._db.execute(
        "CREATE TRIGGER fail_third BEFORE INSERT ON images WHEN NEW.idx = 2"
        " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    with pytest.raises(StorageError, match="disk is full"):
        store.create_job(submission(), "k", {})
    counts = [
        store._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("jobs", "images")
    ]
    assert counts == [0, 0]


def test_database_uses_wal(tmp_path: Path) -> None:
    JobStore(tmp_path / "db.sqlite3").close()
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
