from __future__ import annotations

from pathlib import Path

from core.pg_store import PostgresStore
from core.settings import Settings
from core.storage import SqliteStore
from core.store import open_store


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
