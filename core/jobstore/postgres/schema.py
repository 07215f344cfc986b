"""The PostgreSQL job database: its schema as numbered migrations.

The tables mirror the SQLite ones, so both stores answer alike. Each migration
runs once, in order, recorded in `schema_version`; a later release appends to `MIGRATIONS`.
"""

from __future__ import annotations

from typing import Any, LiteralString

import psycopg

# Times are Unix seconds (double precision) as in SQLite, given by the caller, except the
# lease's, which the database's own clock sets (see `leases`).
SCHEMA_V1: LiteralString = """
CREATE TABLE jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- a sequence: never handed out twice
    submission_key text UNIQUE,
    request_hash text,  -- fingerprint of an Idempotency-Key submission
    status text NOT NULL,
    image_count bigint NOT NULL,
    created_at double precision NOT NULL,
    started_at double precision,  -- the first image went to a worker
    finished_at double precision,
    cancelled_at double precision,
    errors text,  -- JSON, as in SQLite: text keeps it byte for byte (jsonb would refuse \\u0000)
    client_id text,  -- who submitted it, when API keys are on; NULL otherwise
    callback_url text,
    callback_done_at double precision,  -- delivered, or given up on
    settled_count bigint NOT NULL DEFAULT 0,
    failed_count bigint NOT NULL DEFAULT 0
);
CREATE INDEX jobs_ongoing ON jobs (id) WHERE status = 'ongoing';
CREATE INDEX jobs_of_client ON jobs (client_id, id);
-- A visit's fields are stored once, not once per image: a job's size on disk follows its body.
CREATE TABLE visits (
    job_id bigint NOT NULL REFERENCES jobs (id),
    visit bigint NOT NULL,  -- position in the submission
    store_id text NOT NULL,
    visit_time text NOT NULL,
    PRIMARY KEY (job_id, visit)
);
CREATE TABLE images (
    job_id bigint NOT NULL REFERENCES jobs (id),
    idx bigint NOT NULL,
    visit bigint NOT NULL,
    url text NOT NULL,
    PRIMARY KEY (job_id, idx)
);
-- Ray's node ids are 56 characters: stored once here, not once per result.
CREATE TABLE nodes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node_id text NOT NULL UNIQUE
);
-- No foreign keys, as in SQLite: a result is whatever the tracker reports, checked there.
CREATE TABLE results (
    job_id bigint NOT NULL,
    idx bigint NOT NULL,
    width bigint,
    height bigint,
    error text,
    processed_at double precision NOT NULL,
    node bigint,  -- nodes.id
    PRIMARY KEY (job_id, idx)
);
-- Progress counts kept by the database itself: exact whatever inserts are ignored as duplicates
-- (the transition table holds only the rows inserted), and O(1) to read for a job of any size.
-- Once per statement, not per row: a batch of 10,000 results updates each job's row once.
CREATE FUNCTION count_results() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE jobs SET settled_count = settled_count + added.settled,
                    failed_count = failed_count + added.failed
    FROM (SELECT job_id, COUNT(*) AS settled, COUNT(error) AS failed
          FROM inserted GROUP BY job_id) AS added
    WHERE jobs.id = added.job_id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER results_count AFTER INSERT ON results
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION count_results();
-- Who dispatches: one tracker at a time, until its lease expires unrenewed.
CREATE TABLE leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL  -- by the database's clock: hosts may disagree on theirs
);
"""

# A callback is claimed by the lease holder before it is sent (`claim_callback`); the lease
# step's sweep for the callbacks due reads an index, not every job.
CALLBACK_CLAIMS: LiteralString = """
ALTER TABLE jobs ADD COLUMN callback_claimed_by text;
CREATE INDEX jobs_callbacks_due ON jobs (id)
    WHERE callback_url IS NOT NULL AND callback_done_at IS NULL;
"""

# How many jobs there are, in all ('') and per client: `/api/jobs` answers its `total` from one
# row instead of counting every job per request. Jobs are never deleted.
JOB_TOTALS: LiteralString = """
CREATE TABLE job_totals (scope text PRIMARY KEY, jobs bigint NOT NULL);
INSERT INTO job_totals SELECT '', COUNT(*) FROM jobs UNION ALL
    SELECT 'client:' || client_id, COUNT(*) FROM jobs WHERE client_id IS NOT NULL
    GROUP BY client_id;
CREATE FUNCTION count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_totals SELECT scope, COUNT(*) FROM (
        SELECT '' AS scope FROM inserted
        UNION ALL SELECT 'client:' || client_id FROM inserted WHERE client_id IS NOT NULL
    ) AS added GROUP BY scope
    ON CONFLICT (scope) DO UPDATE SET jobs = job_totals.jobs + excluded.jobs;
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobs_total AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION count_jobs();
"""

# Migration n (from 1) brings a database at version n - 1 to version n. Append; never edit.
MIGRATIONS: tuple[LiteralString, ...] = (SCHEMA_V1, CALLBACK_CLAIMS, JOB_TOTALS)

# Held while migrating, so that two processes opening a new database at once take turns (two
# CREATE TABLE IF NOT EXISTS racing can both pass the check and one fail on the catalog).
MIGRATION_LOCK = 0x696D_6A6F_6273  # "imjobs"


def migrate(db: psycopg.Connection[Any]) -> None:
    """Bring the database to the last migration, in one transaction, one process at a time."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = int(row[0]) if row is not None and row[0] is not None else 0
        for version, migration in enumerate(MIGRATIONS[current:], start=current + 1):
            db.execute(migration)  # no parameters: the whole script goes as one query
            db.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
