"""Opening the job store and its status reader: the backend the settings name, and only it."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from core.errors import StorageError
from core.jobstore import open_status_reader, open_store
from core.jobstore.postgres.connection import PostgresConnections
from core.jobstore.postgres.reader import READER_POOL_SIZE
from core.jobstore.postgres.store import PostgresStore
from core.jobstore.sqlite.store import SqliteStore
from core.settings import Settings
from tests.test_pg_store import sql, submission

ROOT = Path(__file__).resolve().parent.parent


def test_without_a_database_url_the_store_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    store = open_store(Settings.from_env({"IMAGE_SERVICE_DATA_DIR": str(tmp_path)}))
    try:
        assert isinstance(store, SqliteStore)
        assert (tmp_path / "jobs.sqlite3").exists()
    finally:
        store.close()


def test_a_database_url_opens_the_postgresql_store(postgres_url: str, tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"IMAGE_SERVICE_DATABASE_URL": postgres_url, "IMAGE_SERVICE_DATA_DIR": str(tmp_path)}
    )
    store = open_store(settings)
    try:
        assert isinstance(store, PostgresStore)
        assert store.unfinished_jobs() == []
        assert not (tmp_path / "jobs.sqlite3").exists()
    finally:
        store.close()


def test_a_sqlite_store_and_its_status_reader_never_import_psycopg(tmp_path: Path) -> None:
    """A deployment loads only the backend it uses: psycopg is PostgreSQL's alone."""
    script = f"""
import asyncio, sys
from core.jobstore import open_status_reader, open_store
from core.models import JobSubmission, Visit
from core.settings import Settings
from service.status_source import StatusSource

settings = Settings.from_env({{"IMAGE_SERVICE_DATA_DIR": {str(tmp_path)!r}}})
store = open_store(settings)
visit = Visit("S1", "2025-01-01", ("http://a.test/1",))
job_id, _ = store.create_job(JobSubmission((visit,)), None, {{}})
reader = open_status_reader(settings)
assert reader.local and reader.job_view(job_id) == store.job_view(job_id)
assert asyncio.run(StatusSource(settings).job_view(job_id)) == store.job_view(job_id)
print(sorted(name for name in sys.modules if name.startswith("psycopg")))
"""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_SERVICE_")}
    ran = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"


@pytest.mark.postgres
def test_the_postgresql_status_reader_never_migrates(postgres_url: str) -> None:
    """Every edge and API replica opens one: the tracker's store creates the tables, and a
    reader only reads them, over a pool of its own of at most `READER_POOL_SIZE`."""
    settings = Settings.from_env({"IMAGE_SERVICE_DATABASE_URL": postgres_url})
    reader = open_status_reader(settings)
    try:
        assert not reader.local
        with pytest.raises(StorageError, match='relation "jobs" does not exist'):
            reader.job_view(1)
        assert sql(postgres_url, "SELECT to_regclass('schema_version') IS NULL") == [(True,)]
        store = open_store(settings)
        job_id, _ = store.create_job(submission(), None, {})
        expected = store.job_view(job_id)
        store.close()
        with ThreadPoolExecutor(16) as threads:
            views = list(threads.map(lambda _n: reader.job_view(job_id), range(64)))
        assert views == [expected] * 64
        [(others,)] = sql(
            postgres_url,
            "SELECT COUNT(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        assert 1 <= others <= READER_POOL_SIZE
    finally:
        reader.close()


@pytest.mark.postgres
def test_read_only_connections_refuse_writes(postgres_url: str) -> None:
    open_store(Settings.from_env({"IMAGE_SERVICE_DATABASE_URL": postgres_url})).close()
    connections = PostgresConnections(postgres_url, 2.0, 1, 1.0, read_only=True)
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), connections.connection() as db:
            db.execute("DELETE FROM jobs")
    finally:
        connections.close()
