"""The SQLite job database: its schema, the migrations of older files, how it is opened, and
the transaction every write runs in."""

from __future__ import annotations

import sqlite3
from pathlib import Path

IMAGES_COLUMNS = """(
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    idx INTEGER NOT NULL,
    visit INTEGER NOT NULL,
    url TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an id is never handed out twice
    submission_key TEXT UNIQUE,
    status TEXT NOT NULL,
    image_count INTEGER NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    errors TEXT,
    client_id TEXT  -- who submitted it, when API keys are on; NULL otherwise
);
CREATE INDEX IF NOT EXISTS jobs_ongoing ON jobs (status) WHERE status = 'ongoing';
-- A visit's fields are stored once, not once per image: a job's size on disk follows its body.
CREATE TABLE IF NOT EXISTS visits (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    visit INTEGER NOT NULL,  -- position in the submission
    store_id TEXT NOT NULL,
    visit_time TEXT NOT NULL,
    PRIMARY KEY (job_id, visit)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS images {IMAGES_COLUMNS};
CREATE TABLE IF NOT EXISTS results (
    job_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    error TEXT,
    processed_at REAL NOT NULL,
    node_id TEXT,  -- before nodes had a table: the node's id itself
    node INTEGER,  -- nodes.id
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
-- Ray's node ids are 56 characters: stored once here, not once per result.
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL UNIQUE
);
-- Who dispatches: one tracker at a time, until its lease expires unrenewed.
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""

# Columns added after the first release; a database from before gets them on opening.
LATER_JOB_COLUMNS = {
    "client_id": "TEXT",
    "started_at": "REAL",  # the first image went to a worker
    "cancelled_at": "REAL",
    "request_hash": "TEXT",  # fingerprint of an Idempotency-Key submission
    "callback_url": "TEXT",
    "callback_done_at": "REAL",  # delivered, or given up on
    "callback_claimed_by": "TEXT",  # the lease holder that claimed it, to send it
    "settled_count": "INTEGER NOT NULL DEFAULT 0",
    "failed_count": "INTEGER NOT NULL DEFAULT 0",
}

# Progress counts kept by the database itself: exact whatever inserts are ignored as duplicates,
# and O(1) to read for a job of any size.
COUNT_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS results_count AFTER INSERT ON results BEGIN
    UPDATE jobs SET settled_count = settled_count + 1,
                    failed_count = failed_count + (NEW.error IS NOT NULL)
    WHERE id = NEW.job_id;
END;
"""

# How many jobs there are, in all ('') and per client: `/api/jobs` answers its `total` from one
# row instead of counting every job per request. Jobs are never deleted.
JOB_TOTALS = (
    "CREATE TABLE job_totals (scope TEXT PRIMARY KEY, jobs INTEGER NOT NULL)",
    """
CREATE TRIGGER jobs_total AFTER INSERT ON jobs BEGIN
    INSERT INTO job_totals VALUES ('', 1) ON CONFLICT (scope) DO UPDATE SET jobs = jobs + 1;
    INSERT INTO job_totals SELECT 'client:' || NEW.client_id, 1 WHERE NEW.client_id IS NOT NULL
        ON CONFLICT (scope) DO UPDATE SET jobs = jobs + 1;
END;
""",
)

# The lease step sweeps for callbacks due: without it, a scan of every job there is.
CALLBACKS_DUE_INDEX = (
    "CREATE INDEX IF NOT EXISTS jobs_callbacks_due ON jobs (id)"
    " WHERE callback_url IS NOT NULL AND callback_done_at IS NULL"
)

# Before visits had a table of their own, every image row carried its visit's fields.
SPLIT_VISITS = f"""
ALTER TABLE images RENAME TO images_with_visits;
CREATE TABLE images {IMAGES_COLUMNS};
INSERT INTO visits SELECT job_id, idx, store_id, visit_time FROM images_with_visits;
INSERT INTO images SELECT job_id, idx, idx, url FROM images_with_visits;
DROP TABLE images_with_visits;
"""

# The WAL file is cut back to this size after a checkpoint, so it cannot stay large.
WAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024


def open_database(path: Path) -> sqlite3.Connection:
    """The database at `path`, created or migrated to the current schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a process crash; only power loss can undo the
    # last commits, which costs at most re-processing those images. The commits a client
    # is told about (a job recorded, a cancel) are made durable (see `_transaction`).
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=5000")
    db.executescript(SCHEMA)
    migrate(db)
    return db


def migrate(db: sqlite3.Connection) -> None:
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    image_columns = {row[1] for row in db.execute("PRAGMA table_info(images)")}
    result_columns = {row[1] for row in db.execute("PRAGMA table_info(results)")}
    with Transaction(db, durable=False):
        if "node" not in result_columns:
            db.execute("ALTER TABLE results ADD COLUMN node INTEGER")
        if "store_id" in image_columns:
            for statement in SPLIT_VISITS.split(";"):
                if statement.strip():
                    db.execute(statement)
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
        if "seconds" not in {row[1] for row in db.execute("PRAGMA table_info(leases)")}:
            db.execute("ALTER TABLE leases ADD COLUMN seconds REAL")  # the holder's lease length
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'job_totals'").fetchone():
            for statement in JOB_TOTALS:
                db.execute(statement)
            db.execute(
                "INSERT INTO job_totals SELECT '', COUNT(*) FROM jobs UNION ALL"
                " SELECT 'client:' || client_id, COUNT(*) FROM jobs"
                " WHERE client_id IS NOT NULL GROUP BY client_id"
            )


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error: no half-written job or batch.

    A durable one commits with `synchronous=FULL`: the WAL is synced at its COMMIT, so not even
    a power loss undoes it (NORMAL syncs only at checkpoints)."""

    def __init__(self, db: sqlite3.Connection, durable: bool) -> None:
        self._db = db
        self._durable = durable

    def __enter__(self) -> None:
        if self._durable:
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        try:
            if exc_type is None:
                try:
                    self._db.execute("COMMIT")
                    return
                except sqlite3.Error:
                    self._rollback()
                    raise
            self._rollback()
        finally:
            if self._durable:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
