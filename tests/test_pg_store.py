"""What only PostgreSQL can do to the job store: text it refuses, integers past bigint, two
stores (two processes) on one database racing each other, a lease between hosts whose clocks
disagree, and a server that goes away. The shared semantics are in tests/test_storage.py."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
import pytest

from core.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    StorageError,
    SubmissionOutcomeUnknown,
)
from core.jobstore.postgres import store as pg_store
from core.jobstore.postgres.connection import abort_connection, connection_options
from core.jobstore.postgres.store import PostgresStore
from core.jobstore.rows import UNSTORABLE_RESULT
from core.models import ImageOutcome, JobState, JobSubmission, Visit
from harness.postgres import PostgresServer

pytestmark = pytest.mark.postgres

T = TypeVar("T")


def submission(store_id: str = "S1", url: str = "http://a.test/1") -> JobSubmission:
    return JobSubmission(
        visits=(
            Visit(store_id, "2025-01-01", (url, "http://a.test/2")),
            Visit("S2", "2025-01-02", ("http://a.test/3",)),
        )
    )


def done(job_id: int, index: int, size: int = 10) -> ImageOutcome:
    return ImageOutcome(job_id, index, processed_at=1.0, width=size, height=size)


@pytest.fixture
def open_store(postgres_url: str) -> Iterator[Callable[[], PostgresStore]]:
    """Opens stores on the test's database, as separate processes would; closed after."""
    opened: list[PostgresStore] = []

    def open_one() -> PostgresStore:
        opened.append(PostgresStore(postgres_url))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], PostgresStore]) -> PostgresStore:
    return open_store()


def at_once(count: int, call: Callable[[int], T]) -> list[T]:
    """`call(0)` ... `call(count - 1)` in threads released together."""
    start = threading.Barrier(count)

    def run(number: int) -> T:
        start.wait(timeout=10)
        return call(number)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def sql(url: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as db:
        return db.execute(statement.encode()).fetchall()


def test_nul_in_an_error_or_a_node_id_fails_that_image_alone(store: PostgresStore) -> None:
    job_id, _ = store.create_job(submission(), None, {})
    nul_error = ImageOutcome(job_id, 1, 1.0, error="HTTP 404 from http://a.test/\x00")
    nul_node = ImageOutcome(job_id, 2, 1.0, width=5, height=5, node_id="node-\x00")
    assert store.save_outcomes([done(job_id, 0), nul_error, nul_node], [job_id]) == [
        nul_error, nul_node,
    ]  # fmt: skip
    _total, rows = store.results_page(job_id, 0, 10)
    assert [(r.width, r.error, r.node_id) for r in rows] == [
        (10, None, None), (None, UNSTORABLE_RESULT, None), (None, UNSTORABLE_RESULT, None),
    ]  # fmt: skip
    detail = store.job_detail(job_id)
    assert detail is not None and (detail.state, detail.done, detail.failed) == (
        JobState.FAILED, 1, 2
    )  # fmt: skip


@pytest.mark.parametrize(
    ("width", "height"),
    [(2**70, 1), (1, -(2**63) - 1), (2**63 - 1, 2**63)],
    ids=["2**70 wide", "below bigint", "one past bigint"],
)
def test_an_integer_past_bigint_fails_that_image_alone(
    store: PostgresStore, width: int, height: int
) -> None:
    job_id, _ = store.create_job(submission(), None, {})
    outcome = ImageOutcome(job_id, 1, 1.0, width=width, height=height)
    assert store.save_outcomes([done(job_id, 0), outcome, done(job_id, 2)], []) == [outcome]
    _total, rows = store.results_page(job_id, 0, 10)
    assert [r.error for r in rows] == [None, UNSTORABLE_RESULT, None]


def test_the_largest_bigint_is_stored_as_it_is(store: PostgresStore) -> None:
    job_id, _ = store.create_job(submission(), None, {})
    widest = ImageOutcome(job_id, 0, 1.0, width=2**63 - 1, height=-(2**63))
    assert store.save_outcomes([widest], []) == []
    _total, [row, *_] = store.results_page(job_id, 0, 1)
    assert (row.width, row.height) == (2**63 - 1, -(2**63))


def test_an_outcome_naming_no_storable_image_is_reported_and_the_rest_kept(
    store: PostgresStore,
) -> None:
    job_id, _ = store.create_job(submission(), None, {})
    nowhere = ImageOutcome(job_id, 2**70, 1.0, width=1, height=1)
    assert store.save_outcomes([done(job_id, 0), nowhere], []) == [nowhere]
    _urls, settled = store.job_images(job_id)
    assert settled == bytearray([1, 0, 0])


def test_a_one_megabyte_error_is_stored_cut_even_with_nul_past_the_cut(
    store: PostgresStore,
) -> None:
    job_id, _ = store.create_job(submission(), None, {})
    huge = ImageOutcome(job_id, 0, 1.0, error="e" * 2**20)
    nul_far = ImageOutcome(job_id, 1, 1.0, error="f" * 2**20 + "\x00")
    assert store.save_outcomes([huge, nul_far], []) == []
    _total, rows = store.results_page(job_id, 0, 2)
    for row, letter in zip(rows, "ef", strict=True):
        assert row.error is not None and len(row.error) == 2500
        assert row.error == letter * 2497 + "..."


@pytest.mark.parametrize(
    ("key", "job"),
    [
        (None, submission(store_id="S\x00")),
        (None, submission(url="http://a.test/\x00")),
        (None, JobSubmission(submission().visits, callback_url="http://cb.test/\x00")),
        ("key-\x00", submission()),
    ],
    ids=["store id", "url", "callback url", "idempotency key"],
)
def test_nul_in_a_submission_records_nothing_and_the_store_goes_on(
    store: PostgresStore, postgres_url: str, key: str | None, job: JobSubmission
) -> None:
    # Submission checks refuse control characters long before; this is the last line.
    with pytest.raises(StorageError, match=r"could not record the job: .*NUL"):
        store.create_job(job, key, {})
    counts = [sql(postgres_url, f"SELECT COUNT(*) FROM {t}")[0][0] for t in ("jobs", "images")]
    assert counts == [0, 0]
    job_id, created = store.create_job(submission(), "key", {})
    assert created and store.results_page(job_id, 0, 10)[0] == 3


WAITING_ON_A_LOCK = (
    "SELECT COUNT(*) FROM pg_stat_activity"
    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
)


# Records, at the commit of every transaction that wrote a job or a result, the
# synchronous_commit it committed under: a deferred constraint trigger runs at COMMIT, after
# whatever the transaction set (a SET LOCAL) and with whatever its connection was opened with.
RECORD_COMMIT_MODES = (
    "CREATE TABLE commit_modes (written text NOT NULL, mode text NOT NULL)",
    "CREATE FUNCTION record_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " INSERT INTO commit_modes VALUES (TG_TABLE_NAME, current_setting('synchronous_commit'));"
    " RETURN NULL; END $$",
    *(
        f"CREATE CONSTRAINT TRIGGER commit_mode AFTER INSERT OR UPDATE ON {table}"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION record_commit_mode()"
        for table in ("jobs", "results")
    ),
)


def test_every_job_and_result_is_committed_synchronously(
    store: PostgresStore, postgres_url: str
) -> None:
    # The README's "synchronous_commit on, for every commit", result batches included. Broken
    # by the store's connections opened with it off (`-c synchronous_commit=off` among their
    # options, for speed), or by a write that turns it off for its own transaction.
    with psycopg.connect(postgres_url, autocommit=True) as db:
        for statement in RECORD_COMMIT_MODES:
            db.execute(statement.encode())
    job_id, _ = store.create_job(submission(), None, {})
    assert store.save_outcomes([done(job_id, 0)], []) == []
    assert store.save_outcomes([done(job_id, 1), done(job_id, 2)], [job_id]) == []
    modes = sql(postgres_url, "SELECT written, mode FROM commit_modes")
    assert {written for written, _mode in modes} == {"jobs", "results"}
    assert {mode for _written, mode in modes} == {"on"}


def test_a_key_committed_while_a_job_is_being_recorded_answers_that_job(
    store: PostgresStore, postgres_url: str
) -> None:
    # Another store's transaction holds the key, uncommitted, when this one looks it up and
    # inserts: the insert waits for it, and then answers its job instead of failing.
    with psycopg.connect(postgres_url) as other:
        [(other_id,)] = other.execute(
            "INSERT INTO jobs (submission_key, request_hash, status, image_count, created_at)"
            " VALUES ('key', 'h', 'ongoing', 3, 1.0) RETURNING id"
        ).fetchall()
        with ThreadPoolExecutor(2) as pool:
            same = pool.submit(store.create_job, submission(), "key", {}, None, "h")
            differs = pool.submit(store.create_job, submission(), "key", {}, None, "other")
            deadline = time.monotonic() + 10
            while sql(postgres_url, WAITING_ON_A_LOCK)[0][0] < 2:
                assert time.monotonic() < deadline, "the inserts never waited for the key"
                time.sleep(0.02)
            other.commit()
            assert same.result(timeout=10) == (other_id, False)
            with pytest.raises(IdempotencyConflict, match=f"job {other_id}"):
                differs.result(timeout=10)


def test_one_key_submitted_by_two_stores_at_once_is_one_job(
    open_store: Callable[[], PostgresStore],
) -> None:
    stores = [open_store(), open_store()]

    def submit(number: int, key: str) -> tuple[int, bool]:
        return stores[number].create_job(submission(), key, {})

    for round_ in range(20):
        answers = at_once(2, functools.partial(submit, key=f"k{round_}"))
        assert answers[0][0] == answers[1][0]
        assert sorted(created for _job, created in answers) == [False, True]
    assert len(stores[0].recent_jobs(None, 0, 100)[1]) == 20


def test_two_stores_saving_the_same_outcomes_at_once_keep_one_row_each(
    open_store: Callable[[], PostgresStore], postgres_url: str
) -> None:
    stores = [open_store(), open_store()]
    urls = tuple(f"http://a.test/{i}" for i in range(200))
    job_id, _ = stores[0].create_job(JobSubmission((Visit("S1", "d", urls),)), None, {})

    def report(number: int, first: int) -> list[ImageOutcome]:
        # Both stores report the same ten images, each with its own width.
        outcomes = [done(job_id, i, size=number + 1) for i in range(first, first + 10)]
        return stores[number].save_outcomes(outcomes, [])

    for first in range(0, 200, 10):
        assert at_once(2, functools.partial(report, first=first)) == [[], []]
    [(rows, distinct_widths)] = sql(
        postgres_url, f"SELECT COUNT(*), COUNT(DISTINCT width) FROM results WHERE job_id = {job_id}"
    )
    detail = stores[1].job_detail(job_id)
    assert rows == 200 and distinct_widths in (1, 2)
    assert detail is not None and (detail.done, detail.failed) == (200, 0)
    [(settled,)] = sql(postgres_url, f"SELECT settled_count FROM jobs WHERE id = {job_id}")
    assert settled == 200


def test_the_lease_passes_between_stores_when_it_expires(
    open_store: Callable[[], PostgresStore],
) -> None:
    first, second = open_store(), open_store()
    assert first.hold_lease("a", 0.3)
    assert not second.hold_lease("b", 60)
    assert first.hold_lease("a", 0.3)  # renewed
    time.sleep(0.5)
    assert second.hold_lease("b", 60)
    assert not first.hold_lease("a", 60)
    first.release_lease("a")  # not a's: b keeps it
    assert not first.hold_lease("a", 60)
    second.release_lease("b")
    assert first.hold_lease("a", 60)


def test_the_lease_keeps_the_database_clock_whatever_the_hosts_say(
    open_store: Callable[[], PostgresStore],
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = open_store(), open_store()
    assert first.hold_lease("a", 60)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this host runs an hour ahead
    assert not second.hold_lease("b", 60)
    [(left,)] = sql(postgres_url, "SELECT EXTRACT(EPOCH FROM expires_at - now()) FROM leases")
    assert 50 < float(left) <= 60


def test_a_new_database_opened_by_several_stores_at_once_is_migrated_once(
    postgres_url: str,
) -> None:
    stores = at_once(4, lambda _n: PostgresStore(postgres_url))
    try:
        assert sql(postgres_url, "SELECT version FROM schema_version") == [(1,), (2,), (3,)]
        job_id, _ = stores[0].create_job(submission(), None, {})
        assert stores[3].job_view(job_id) is not None
    finally:
        for store in stores:
            store.close()
    PostgresStore(postgres_url).close()
    assert sql(postgres_url, "SELECT version FROM schema_version") == [(1,), (2,), (3,)]


def test_a_malformed_url_is_refused_without_quoting_it() -> None:
    with pytest.raises(StorageError, match="malformed") as refused:
        PostgresStore("postgresql://user:s3cret@[::1/jobs?sslmode=%zz")
    assert "s3cret" not in str(refused.value)


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A server of the test's own, to stop: the session's goes on serving the others."""
    server = PostgresServer().start()
    yield server
    server.remove()


def test_a_server_gone_gives_storage_errors_in_seconds_and_a_restart_heals(
    own_server: PostgresServer,
) -> None:
    url = own_server.empty_database().replace("postgres@", "postgres:s3cret@")
    store = PostgresStore(url)
    try:
        job_id, _ = store.create_job(submission(), None, {})
        own_server.stop()
        for call in (
            lambda: store.job_view(job_id),
            lambda: store.save_outcomes([done(job_id, 0)], []),
            lambda: PostgresStore(url),
        ):
            began = time.monotonic()
            with pytest.raises(StorageError, match=r"could not|job database") as failed:
                call()
            assert time.monotonic() - began < 10
            assert "s3cret" not in str(failed.value)
        own_server.start()
        assert eventually(lambda: store.save_outcomes([done(job_id, 0)], [])) == []
        assert store.job_images(job_id)[1] == bytearray([1, 0, 0])
    finally:
        store.close()


def eventually(call: Callable[[], T], within: float = 30) -> T:
    """`call`'s answer once it stops raising StorageError, as the tracker's retries would get."""
    deadline = time.monotonic() + within
    while True:
        try:
            return call()
        except StorageError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_frozen_server_costs_one_deadline_then_nothing_and_recovers(
    own_server: PostgresServer,
) -> None:
    """Every server process stopped (SIGSTOP: the connection stays open, nothing answers):
    the first call fails at its deadline, the next ones at once, every one with a 503's
    DatabaseUnavailable; after SIGCONT the store answers again, nothing lost. Without the
    deadlines the first call hung until TCP gave up (~15 minutes)."""
    url = own_server.empty_database()
    store = PostgresStore(url, timeout=1.0)
    job_id, _ = store.create_job(submission(), None, {})
    own_server.freeze()
    try:
        began = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            store.job_view(job_id)
        first = time.monotonic() - began
        assert 0.9 < first < 3, f"the first call took {first:.1f} s"
        began = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            store.save_outcomes([done(job_id, 0)], [])
        assert time.monotonic() - began < 0.5, "a later call waited for the frozen server"
    finally:
        own_server.thaw()
    assert eventually(lambda: store.save_outcomes([done(job_id, 0)], []), within=10) == []
    assert store.job_images(job_id)[1] == bytearray([1, 0, 0])
    store.close()


def test_a_submit_whose_commit_is_cut_off_says_nothing_was_kept_only_when_true(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies at COMMIT: the store asks the database afterwards whether the job
    was kept. Here it was not (the server never got the COMMIT): "nothing was kept" is true.
    If it cannot be asked either, it says the job may have been kept."""
    store = PostgresStore(postgres_url, timeout=2.0)
    real_insert, real_lookup = PostgresStore._insert_job, pg_store._job_for_key
    asking_fails = False
    committed = False

    def insert_then_lose_the_connection(self: PostgresStore, db: Any, *args: Any) -> Any:
        nonlocal committed
        created = real_insert(self, db, *args)
        abort_connection(db)  # the COMMIT that follows goes nowhere
        committed = True
        return created

    def lookup(*args: Any) -> Any:
        if committed and asking_fails:
            raise psycopg.OperationalError("the server is gone")
        return real_lookup(*args)

    monkeypatch.setattr(PostgresStore, "_insert_job", insert_then_lose_the_connection)
    monkeypatch.setattr(pg_store, "_job_for_key", lookup)
    with pytest.raises(DatabaseUnavailable, match="nothing was kept"):
        store.create_job(submission(), "key-1", {})
    committed, asking_fails = False, True
    time.sleep(1.1)  # past the probe interval: the store tries the database again
    with pytest.raises(SubmissionOutcomeUnknown, match="may have been kept"):
        store.create_job(submission(), "key-2", {})
    monkeypatch.undo()
    time.sleep(1.1)
    assert store.job_for_key("key-1", None) is None
    assert store.job_for_key("key-2", None) is None
    store.close()


def test_statement_timeout_is_kept_beside_options_of_the_url_own() -> None:
    options = connection_options("postgresql://u@h/db?options=-c%20search_path%3Djobs", 2.5)
    assert options["options"] == "-c search_path=jobs -c statement_timeout=2500"
    own = connection_options("postgresql://u@h/db?options=-c%20statement_timeout%3D100", 2.5)
    assert "options" not in own  # the URL's own statement_timeout wins
    assert options["tcp_user_timeout"] == 10_000 and options["keepalives"] == 1
