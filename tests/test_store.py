from __future__ import annotations

from pathlib import Path

from core.jobstore import open_store
from core.jobstore.postgres.store import PostgresStore
from core.jobstore.sqlite.store import SqliteStore
from core.settings import Settings


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
