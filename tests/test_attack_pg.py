"""Adversarial tests of the PostgreSQL store's deadlines and commit handling, on a real server
(the session's, or one of the test's own to freeze). Each fails on the code it was written
against, for the reason its docstring gives."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from core.errors import DatabaseUnavailable, SubmissionOutcomeUnknown
from core.jobstore.postgres import connection as pg_connection
from core.jobstore.postgres.connection import abort_connection
from core.jobstore.postgres.store import PostgresStore
from harness.postgres import PostgresServer
from tests.test_pg_store import own_server, sql, submission  # noqa: F401 - a fixture

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


def test_a_submit_without_a_key_whose_commit_landed_is_not_told_nothing_was_kept(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: "If the connection drops during the COMMIT, the database is asked again whether
    the job was kept ... if not, 503 'nothing was kept'". Without an Idempotency-Key there is
    nothing to ask by: _job_for_key(None) answers None without a query, and create_job says
    "nothing was kept" although the COMMIT reached the server and the job is there. The
    client, told so with Retry-After, submits again: the job is recorded twice."""
    store = PostgresStore(postgres_url, timeout=2.0)
    real_transaction = psycopg.Connection.transaction

    @contextmanager
    def answer_lost(self: psycopg.Connection[Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
        with real_transaction(self, *args, **kwargs) as transaction:
            yield transaction
        # The COMMIT reached the server and was applied; its answer never came back.
        abort_connection(self)
        raise psycopg.OperationalError("consuming input failed: server closed the connection")

    monkeypatch.setattr(psycopg.Connection, "transaction", answer_lost)
    try:
        store.create_job(submission(), None, {})
        said = "created"
    except SubmissionOutcomeUnknown as exc:
        said = f"unknown: {exc}"
    except DatabaseUnavailable as exc:
        said = str(exc)
    finally:
        monkeypatch.undo()
        store.close()
    (kept,) = sql(postgres_url, "SELECT COUNT(*) FROM jobs")[0]
    assert kept == 1
    assert "nothing was kept" not in said, f"the job is kept, and the client was told: {said}"


def test_a_call_that_waited_for_a_connection_still_ends_at_its_deadline(
    own_server: PostgresServer,  # noqa: F811 - the fixture
) -> None:
    """PostgresStore._connection: "cut off at the call's deadline (the wait for the connection
    included)". The pool's check (PostgresStore._check) runs under a deadline of its own, the
    store's whole timeout, not what is left of the call's. A call that waited 0.6 s of its 1 s
    for a connection, then finds the server frozen, waits 1 s more in the check: 1.6 s."""
    store = PostgresStore(own_server.empty_database(), timeout=1.0, max_connections=1)
    job_id, _ = store.create_job(submission(), None, {})
    handed_back = threading.Event()

    def hold_then_freeze() -> None:
        with store._connection() as db:
            db.execute("SELECT pg_sleep(0.7)")
            own_server.freeze()  # the server freezes as the connection goes back to the pool
        handed_back.set()

    holder = threading.Thread(target=hold_then_freeze)
    holder.start()
    time.sleep(0.1)
    began = time.monotonic()
    try:
        with pytest.raises(DatabaseUnavailable):
            store.job_view(job_id)
        took = time.monotonic() - began
    finally:
        own_server.thaw()
        holder.join(10)
        store.close()
    assert handed_back.is_set()
    assert took < 1.0 + 0.25, f"a call with a 1 s deadline took {took:.2f} s"


def test_a_late_abort_never_cuts_off_the_call_that_got_the_connection_next(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Watchdog.abort_overdue marks a call aborted under its lock, lets the lock go, then calls
    abort; StoreDeadlines.call's unwatch does not wait for an abort under way. A call that ends
    in that window hands its connection back, the next call takes it, and the abort then shuts
    down the socket of that next call: a healthy database answers it 503 and the breaker
    trips. The window is widened here by holding the abort back (the watchdog's thread
    descheduled between its lock and the abort, or slow in logging a previous abort)."""
    store = PostgresStore(postgres_url, timeout=0.3, max_connections=1)
    aborting, go = threading.Event(), threading.Event()
    real_abort = pg_connection.abort_connection

    def held_back(db: Any) -> None:
        aborting.set()
        go.wait(5)
        real_abort(db)

    monkeypatch.setattr(pg_connection, "abort_connection", held_back)
    try:
        with store._connection() as db, db.transaction():
            db.execute("SET LOCAL statement_timeout = 0")  # the server's own cut-off aside
            db.execute("SELECT pg_sleep(0.5)")  # past its 0.3 s: the watchdog fires
        assert aborting.is_set()
        threading.Timer(0.1, go.set).start()  # the abort lands while the next call runs
        with store._connection(timeout=5.0, probe=True) as db, db.transaction():
            db.execute("SET LOCAL statement_timeout = 0")
            db.execute("SELECT pg_sleep(0.3)")  # the pool's one connection, now this call's
    finally:
        go.set()
        monkeypatch.undo()
        store.close()
