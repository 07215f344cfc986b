"""The job stores under test, opened alike whatever the backend: one empty database per test,
in SQLite or in PostgreSQL, with plain SQL beside the stores opened on it."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from core.jobstore import JobStore, open_store
from core.settings import Settings

BACKENDS = ("sqlite", "postgres")
# A module marked so runs every test on services of each backend in turn (the `backend`
# fixture); PostgreSQL's carries the `postgres` mark, so `make unit` leaves it out.
ON_BOTH_BACKENDS = pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
    scope="session",
)


@dataclass
class StoreDatabase:
    """One database: `open` gives a store on it, again and again (as two processes would
    have); `close` closes every store it gave."""

    backend: str  # one of BACKENDS
    location: str  # the SQLite file, or the PostgreSQL URL
    opened: list[JobStore] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        """The settings of a service whose store is this database."""
        if self.backend == "postgres":
            return Settings(database_url=self.location)
        settings = Settings(data_dir=Path(self.location).parent, database_url="")
        if settings.database_path != Path(self.location).resolve():
            raise ValueError(f"a service keeps its SQLite jobs in {settings.database_path.name}")
        return settings

    def open(self) -> JobStore:
        """A store on it, opened as the service opens its own."""
        store = open_store(self.settings)
        self.opened.append(store)
        return store

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        """Run one statement on a connection of its own, committed; its rows, if any."""
        if self.backend == "sqlite":
            with sqlite3.connect(self.location) as db:
                return db.execute(statement).fetchall()
        with psycopg.connect(self.location, autocommit=True) as pg:
            cursor = pg.execute(statement.encode())
            return cursor.fetchall() if cursor.description is not None else []

    def read(self, statement: str) -> list[tuple[Any, ...]]:
        """The rows of one query on a read-only connection of its own: what is on disk now,
        read beside a running service without touching its database."""
        if self.backend == "sqlite":
            db = sqlite3.connect(f"{Path(self.location).resolve().as_uri()}?mode=ro", uri=True)
            try:
                return db.execute(statement).fetchall()
            finally:
                db.close()
        with psycopg.connect(
            self.location, autocommit=True, options="-c default_transaction_read_only=on"
        ) as pg:
            return pg.execute(statement.encode()).fetchall()

    def close(self) -> None:
        for store in self.opened:
            store.close()
        self.opened.clear()
