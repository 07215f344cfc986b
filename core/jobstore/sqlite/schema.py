"""The SQLite job database: its schema as numbered migrations, how it is opened, and the
transaction every write runs in.

Each migration runs once, in order, recorded in `schema_version`, as PostgreSQL's do; a later
release appends to `MIGRATIONS`. A file from before numbered migrations (no `schema_version`)
is first brought to migration 1's layout (`adopt_unnumbered`), its jobs kept.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from core.jobstore.sqlite.unnumbered import adopt_unnumbered

# The columns are in the order the releases before numbered migrations left them in, so a file
# adopted from one and a new file have one layout.
SCHEMA_V1 = (
    """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an id is never handed out twice
    submission_key TEXT UNIQUE,
    status TEXT NOT NULL,
    image_count INTEGER NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    errors TEXT,
    client_id TEXT,  -- who submitted it, when API keys are on; NULL otherwise
    started_at REAL,  -- the first image went to a worker
    cancelled_at REAL,
    request_hash TEXT,  -- fingerprint of an Idempotency-Key submission
    callback_url TEXT,
    callback_done_at REAL,  -- delivered, or given up on
    callback_claimed_by TEXT,  -- the lease holder that claimed it, to send it
    settled_count INTEGER NOT NULL DEFAULT 0,
    failed_count INTEGER NOT NULL DEFAULT 0
)""",
    "CREATE INDEX jobs_ongoing ON jobs (status) WHERE status = 'ongoing'",
    # The lease step sweeps for callbacks due: without it, a scan of every job there is.
    "CREATE INDEX jobs_callbacks_due ON jobs (id)"
    " WHERE callback_url IS NOT NULL AND callback_done_at IS NULL",
    # A visit's fields are stored once, not once per image: a job's size on disk follows its body.
    """
CREATE TABLE visits (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    visit INTEGER NOT NULL,  -- position in the submission
    store_id TEXT NOT NULL,
    visit_time TEXT NOT NULL,
    PRIMARY KEY (job_id, visit)
) WITHOUT ROWID""",
    """
CREATE TABLE images (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    idx INTEGER NOT NULL,
    visit INTEGER NOT NULL,
    url TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID""",
    """
CREATE TABLE results (
    job_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    error TEXT,
    processed_at REAL NOT NULL,
    node_id TEXT,  -- before nodes had a table: the node's id itself
    node INTEGER,  -- nodes.id
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID""",
    # Progress counts kept by the database itself: exact whatever inserts are ignored as
    # duplicates, and O(1) to read for a job of any size.
    """
CREATE TRIGGER results_count AFTER INSERT ON results BEGIN
    UPDATE jobs SET settled_count = settled_count + 1,
                    failed_count = failed_count + (NEW.error IS NOT NULL)
    WHERE id = NEW.job_id;
END""",
    # Ray's node ids are 56 characters: stored once here, not once per result.
    "CREATE TABLE nodes (id INTEGER PRIMARY KEY, node_id TEXT NOT NULL UNIQUE)",
    # Who dispatches: one tracker at a time, until its lease expires unrenewed.
    """
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL,
    seconds REAL  -- the holder's lease length
)""",
    # How many jobs there are, in all ('') and per client: `/api/jobs` answers its `total` from
    # one row instead of counting every job per request. Jobs are never deleted.
    "CREATE TABLE job_totals (scope TEXT PRIMARY KEY, jobs INTEGER NOT NULL)",
    """
CREATE TRIGGER jobs_total AFTER INSERT ON jobs BEGIN
    INSERT INTO job_totals VALUES ('', 1) ON CONFLICT (scope) DO UPDATE SET jobs = jobs + 1;
    INSERT INTO job_totals SELECT 'client:' || NEW.client_id, 1 WHERE NEW.client_id IS NOT NULL
        ON CONFLICT (scope) DO UPDATE SET jobs = jobs + 1;
END""",
)

# Migration n (from 1) brings a database at version n - 1 to version n, one statement at a
# time. Append; never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (SCHEMA_V1,)

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
    migrate(db)
    return db


def migrate(db: sqlite3.Connection) -> None:
    """Bring the database to the last migration, in one transaction: a process opening the
    same file meanwhile waits for it, then finds it done."""
    with Transaction(db, durable=False):
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        (current,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        if current == 0 and _has_table(db, "jobs"):
            adopt_unnumbered(db)
            current = _record(db, 1)
        for version, migration in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in migration:
                db.execute(statement)
            _record(db, version)


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def _record(db: sqlite3.Connection, version: int) -> int:
    db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    return version


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
