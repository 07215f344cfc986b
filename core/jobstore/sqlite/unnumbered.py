"""How a SQLite job database from before numbered migrations is brought to migration 1's layout.

Those releases had no `schema_version` table: each opening probed the tables and columns and
added what was missing. That probing runs once more here, on such a file only, and is never
edited again: a later change to the layout is a numbered migration (`schema.MIGRATIONS`).
"""

from __future__ import annotations

import sqlite3

# The tables of the last release that probed, each created if missing (the oldest files have
# only `jobs` and `results`); the columns it added later follow below.
TABLES = (
    """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    submission_key TEXT UNIQUE,
    status TEXT NOT NULL,
    image_count INTEGER NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    errors TEXT,
    client_id TEXT
)""",
    "CREATE INDEX IF NOT EXISTS jobs_ongoing ON jobs (status) WHERE status = 'ongoing'",
    """
CREATE TABLE IF NOT EXISTS visits (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    visit INTEGER NOT NULL,
    store_id TEXT NOT NULL,
    visit_time TEXT NOT NULL,
    PRIMARY KEY (job_id, visit)
) WITHOUT ROWID""",
    """
CREATE TABLE IF NOT EXISTS images (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    idx INTEGER NOT NULL,
    visit INTEGER NOT NULL,
    url TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID""",
    """
CREATE TABLE IF NOT EXISTS results (
    job_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    error TEXT,
    processed_at REAL NOT NULL,
    node_id TEXT,
    node INTEGER,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID""",
    """
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL UNIQUE
)""",
    """
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
)""",
)

# Columns added after the first release, in the order they were.
LATER_JOB_COLUMNS = {
    "client_id": "TEXT",
    "started_at": "REAL",
    "cancelled_at": "REAL",
    "request_hash": "TEXT",
    "callback_url": "TEXT",
    "callback_done_at": "REAL",
    "callback_claimed_by": "TEXT",
    "settled_count": "INTEGER NOT NULL DEFAULT 0",
    "failed_count": "INTEGER NOT NULL DEFAULT 0",
}

# Before visits had a table of their own, every image row carried its visit's fields.
SPLIT_VISITS = (
    "ALTER TABLE images RENAME TO images_with_visits",
    """
CREATE TABLE images (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    idx INTEGER NOT NULL,
    visit INTEGER NOT NULL,
    url TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID""",
    "INSERT INTO visits SELECT job_id, idx, store_id, visit_time FROM images_with_visits",
    "INSERT INTO images SELECT job_id, idx, idx, url FROM images_with_visits",
    "DROP TABLE images_with_visits",
)

COUNT_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS results_count AFTER INSERT ON results BEGIN
    UPDATE jobs SET settled_count = settled_count + 1,
                    failed_count = failed_count + (NEW.error IS NOT NULL)
    WHERE id = NEW.job_id;
END"""

CALLBACKS_DUE_INDEX = (
    "CREATE INDEX IF NOT EXISTS jobs_callbacks_due ON jobs (id)"
    " WHERE callback_url IS NOT NULL AND callback_done_at IS NULL"
)

JOB_TOTALS = (
    "CREATE TABLE job_totals (scope TEXT PRIMARY KEY, jobs INTEGER NOT NULL)",
    """
CREATE TRIGGER jobs_total AFTER INSERT ON jobs BEGIN
    INSERT INTO job_totals VALUES ('', 1) ON CONFLICT (scope) DO UPDATE SET jobs = jobs + 1;
    INSERT INTO job_totals SELECT 'client:' || NEW.client_id, 1 WHERE NEW.client_id IS NOT NULL
        ON CONFLICT (scope) DO UPDATE SET jobs = jobs + 1;
END""",
    "INSERT INTO job_totals SELECT '', COUNT(*) FROM jobs UNION ALL"
    " SELECT 'client:' || client_id, COUNT(*) FROM jobs WHERE client_id IS NOT NULL"
    " GROUP BY client_id",
)


def adopt_unnumbered(db: sqlite3.Connection) -> None:
    """Bring a database of a release before numbered migrations to migration 1's layout, its
    jobs kept; inside the caller's transaction."""
    _run(db, TABLES)
    columns = _columns(db, "jobs")
    if "node" not in _columns(db, "results"):
        db.execute("ALTER TABLE results ADD COLUMN node INTEGER")
    if "store_id" in _columns(db, "images"):
        _run(db, SPLIT_VISITS)
    for name, kind in LATER_JOB_COLUMNS.items():
        if name not in columns:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
    if "settled_count" not in columns:
        db.execute(
            "UPDATE jobs SET"
            " settled_count = (SELECT COUNT(*) FROM results r WHERE r.job_id = jobs.id),"
            " failed_count = (SELECT COUNT(*) FROM results r"
            "                 WHERE r.job_id = jobs.id AND r.error IS NOT NULL)"
        )
    db.execute(COUNT_TRIGGER)
    db.execute(CALLBACKS_DUE_INDEX)
    if "seconds" not in _columns(db, "leases"):
        db.execute("ALTER TABLE leases ADD COLUMN seconds REAL")
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'job_totals'").fetchone():
        _run(db, JOB_TOTALS)


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _run(db: sqlite3.Connection, statements: tuple[str, ...]) -> None:
    for statement in statements:
        db.execute(statement)
