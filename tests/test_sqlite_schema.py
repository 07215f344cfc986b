"""The SQLite job database's numbered migrations, and the adoption of a file written by the
release before them (its schema code kept as it was in tests/data/sqlite_schema_00d3cf6.py)."""

from __future__ import annotations

import importlib.util
import sqlite3
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from core.jobstore.base import finish_job, record_job
from core.jobstore.sqlite import schema
from core.jobstore.sqlite.store import SqliteStore
from core.jobstore.sqlite.writes import SqliteWrites
from core.models import ImageOutcome, JobState, JobStatus, JobSubmission, StoreError, Visit

OLD_SCHEMA = Path(__file__).parent / "data" / "sqlite_schema_00d3cf6.py"


def old_schema() -> ModuleType:
    """core/jobstore/sqlite/schema.py of commit 00d3cf6: columns probed, no `schema_version`."""
    spec = importlib.util.spec_from_file_location("sqlite_schema_00d3cf6", OLD_SCHEMA)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def submission() -> JobSubmission:
    return JobSubmission(
        visits=(
            Visit("S1", "2025-01-01", ("http://a.test/1", "http://a.test/2")),
            Visit("S2", "2025-01-02", ("http://a.test/3",)),
        )
    )


def layout(path: Path) -> dict[str, Any]:
    """Every table's columns (name, type, NOT NULL, default, key) in order, and the names of
    the indexes and triggers."""
    db = sqlite3.connect(path)
    try:
        objects = db.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_autoindex%'"
        ).fetchall()
        return {
            "tables": {
                name: [row[1:] for row in db.execute(f"PRAGMA table_info({name})")]
                for kind, name in objects
                if kind == "table"
            },
            "others": sorted((kind, name) for kind, name in objects if kind != "table"),
        }
    finally:
        db.close()


def write_with_the_old_release(path: Path) -> tuple[int, int, float]:
    """A file as the release before numbered migrations left it: an ongoing job with a key, a
    client, one image failed at submission and one settled on a numbered node; a completed
    job; a lease held. Returns the two jobs' ids and when the lease ends."""
    db = old_schema().open_database(path)
    lease_ends = time.time() + 30
    try:
        db.execute("INSERT INTO nodes (node_id) VALUES ('node-1')")
        with schema.Transaction(db, durable=False):
            # The statements are this release's, unchanged since: the columns are the same.
            writes = SqliteWrites(db, {"node-1": 1})
            ongoing, _ = record_job(writes, submission(), "key", {2: "unknown store"}, "a", "h")
            finished, _ = record_job(writes, submission(), None, {}, None, None)
            writes.insert_results([ImageOutcome(ongoing, 0, 1.0, 4, 3, node_id="node-1")])
            writes.insert_results([ImageOutcome(finished, i, 1.0, 5, 5) for i in range(3)])
            finish_job(writes, finished)
            db.execute("INSERT INTO leases VALUES ('dispatch', 'old', ?, 30)", (lease_ends,))
        assert not db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'schema_version'"
        ).fetchone()
    finally:
        db.close()
    return ongoing, finished, lease_ends


def test_a_file_of_the_release_before_numbered_migrations_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    ongoing, finished, _lease_ends = write_with_the_old_release(path)
    store = SqliteStore(path)
    try:
        assert store.job_for_key("key", "h") == ongoing
        detail = store.job_detail(ongoing, client_id="a")
        assert detail is not None
        assert (detail.state, detail.total, detail.done, detail.failed) == (
            JobState.ONGOING, 3, 1, 1
        )  # fmt: skip
        _total, rows = store.results_page(ongoing, 0, 10)
        assert [(r.width, r.node_id, r.error) for r in rows] == [
            (4, "node-1", None), (None, None, None), (None, None, "unknown store")
        ]  # fmt: skip
        assert store.job_view(finished).status is JobStatus.COMPLETED  # type: ignore[union-attr]
        assert [store.recent_jobs(c, 0, 1)[0] for c in (None, "a")] == [2, 1]
        assert [job.job_id for job in store.unfinished_jobs()] == [ongoing]
        assert not store.hold_lease("new", 30)  # the old holder's lease still runs
        store.save_outcomes([ImageOutcome(ongoing, 1, 2.0, error="HTTP 404")], [ongoing])
        view = store.job_view(ongoing)
        assert view is not None and view.errors == (
            StoreError("S1", "HTTP 404"), StoreError("S2", "unknown store")
        )  # fmt: skip
        newer, _ = store.create_job(submission(), None, {}, client_id="a")
        assert newer > finished and store.recent_jobs("a", 0, 1)[0] == 2
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    db.close()


def test_an_adopted_file_and_a_new_one_have_one_layout(tmp_path: Path) -> None:
    write_with_the_old_release(tmp_path / "old.sqlite3")
    SqliteStore(tmp_path / "old.sqlite3").close()
    SqliteStore(tmp_path / "new.sqlite3").close()
    assert layout(tmp_path / "old.sqlite3") == layout(tmp_path / "new.sqlite3")


def test_a_migration_appended_runs_once_on_a_file_at_the_one_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jobs.sqlite3"
    SqliteStore(path).close()
    added = ("ALTER TABLE jobs ADD COLUMN note TEXT",)  # a second run would fail: a duplicate
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, added))
    SqliteStore(path).close()
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,), (2,)]
        assert "note" in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    db.close()


def test_a_migration_that_fails_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jobs.sqlite3"
    SqliteStore(path).close()
    broken = ("ALTER TABLE jobs ADD COLUMN note TEXT", "ALTER TABLE nowhere ADD COLUMN x TEXT")
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, broken))
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        SqliteStore(path)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        assert "note" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    db.close()
