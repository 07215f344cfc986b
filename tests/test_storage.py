"""The job store's semantics, on both backends (`database`: SQLite, then PostgreSQL); what is
SQLite's alone (its files' migrations, PRAGMAs, WAL) is tested on SQLite only."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from core.errors import IdempotencyConflict, StorageError
from core.jobstore import JobStore
from core.jobstore.records import CancelMark
from core.jobstore.rows import UNSTORABLE_RESULT
from core.jobstore.sqlite.store import SqliteStore
from core.models import (
    IMAGE_CANCELLED,
    JOB_CANCELLED,
    FailureReason,
    ImageOutcome,
    JobState,
    JobStatus,
    JobSubmission,
    StoreError,
    Visit,
)
from harness.stores import StoreDatabase


def submission() -> JobSubmission:
    return JobSubmission(
        visits=(
            Visit("S1", "2025-01-01", ("http://a.test/1", "http://a.test/2")),
            Visit("S2", "2025-01-02", ("http://a.test/3",)),
        )
    )


def done(job_id: int, index: int, size: int = 10) -> ImageOutcome:
    return ImageOutcome(job_id, index, processed_at=1.0, width=size, height=size)


@pytest.fixture
def store(database: StoreDatabase) -> JobStore:
    return database.open()


def test_job_ids_increase_and_survive_reopening(database: StoreDatabase) -> None:
    store = database.open()
    first, _ = store.create_job(submission(), "k1", {})
    second, _ = store.create_job(submission(), "k2", {})
    store.close()
    reopened = database.open()
    third, _ = reopened.create_job(submission(), "k3", {})
    assert first < second < third


def test_same_submission_key_returns_the_same_job(store: JobStore) -> None:
    job_id, created = store.create_job(submission(), "key", {})
    again, created_again = store.create_job(submission(), "key", {})
    assert (again, created, created_again) == (job_id, True, False)


def test_a_result_is_kept_once_first_write_wins(store: JobStore) -> None:
    job_id, _ = store.create_job(submission(), None, {})
    store.save_outcomes([done(job_id, 0, 10)], [])
    store.save_outcomes([done(job_id, 0, 99), done(job_id, 1), done(job_id, 2)], [job_id])
    total, rows = store.results_page(job_id, 0, 10)
    assert total == 3 and [r.width for r in rows] == [10, 10, 10]
    assert store.job_view(job_id).status is JobStatus.COMPLETED  # type: ignore[union-attr]


def test_finished_job_lists_first_failure_per_store_in_image_order(store: JobStore) -> None:
    job_id, _ = store.create_job(submission(), None, {2: "store_id not in store master"})
    store.save_outcomes(
        [
            ImageOutcome(job_id, 1, 1.0, error="second failure"),
            ImageOutcome(job_id, 0, 1.0, error="first failure"),
        ],
        [job_id],
    )
    view = store.job_view(job_id)
    assert view is not None and view.status is JobStatus.FAILED
    assert view.errors == (
        StoreError("S1", "first failure"),
        StoreError("S2", "store_id not in store master"),
    )


def test_all_images_failed_at_submission_finishes_the_job_at_once(store: JobStore) -> None:
    job_id, _ = store.create_job(submission(), None, {0: "x", 1: "x", 2: "y"})
    assert store.job_view(job_id).status is JobStatus.FAILED  # type: ignore[union-attr]
    assert store.unfinished_jobs() == []


def test_unfinished_jobs_know_what_is_settled(store: JobStore) -> None:
    job_id, _ = store.create_job(submission(), None, {})
    store.save_outcomes([done(job_id, 1)], [])
    [unfinished] = store.unfinished_jobs()
    urls, settled = store.job_images(unfinished.job_id)
    assert unfinished.job_id == job_id and settled == bytearray([0, 1, 0])
    assert urls == ["http://a.test/1", "http://a.test/2", "http://a.test/3"]


# A trigger that fails on the last image insert stands in for a full disk mid-transaction.
FAIL_THIRD_IMAGE = {
    "sqlite": "CREATE TRIGGER fail_third BEFORE INSERT ON images WHEN NEW.idx = 2"
    " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
    "postgres": "CREATE FUNCTION fail_third() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF NEW.idx = 2 THEN RAISE EXCEPTION 'database or disk is full'; END IF; RETURN NEW;"
    " END $$; CREATE TRIGGER fail_third BEFORE INSERT ON images FOR EACH ROW"
    " EXECUTE FUNCTION fail_third()",
}


def test_failed_write_leaves_no_half_recorded_job(database: StoreDatabase) -> None:
    store = database.open()
    database.sql(FAIL_THIRD_IMAGE[database.backend])
    with pytest.raises(StorageError, match=r"could not record the job: .*disk is full"):
        store.create_job(submission(), "k", {})
    counts = [database.sql(f"SELECT COUNT(*) FROM {t}")[0][0] for t in ("jobs", "visits", "images")]
    assert counts == [0, 0, 0]
    assert store.job_for_key("k", None) is None


def test_database_uses_wal(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "db.sqlite3").close()
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_progress_counts_are_exact_whatever_duplicates_arrive(store: JobStore) -> None:
    job_id, _ = store.create_job(submission(), None, {2: "store_id not in store master"})
    store.save_outcomes([done(job_id, 0), done(job_id, 0), done(job_id, 0, 99)], [])
    detail = store.job_detail(job_id)
    assert detail is not None
    assert (detail.state, detail.total, detail.done, detail.failed) == (JobState.ONGOING, 3, 1, 1)
    assert detail.started_at is None and detail.errors == ()


def test_started_time_is_kept_from_the_first_dispatch(store: JobStore) -> None:
    job_id, _ = store.create_job(submission(), None, {})
    store.save_outcomes([], [], started=[(job_id, 5.0)])
    store.save_outcomes([], [], started=[(job_id, 9.0)])
    assert store.job_detail(job_id).started_at == 5.0  # type: ignore[union-attr]
    [unfinished] = store.unfinished_jobs()
    assert unfinished.started and not unfinished.cancelled


def test_cancel_names_the_stores_left_unfinished_and_ends_failed(store: JobStore) -> None:
    job_id, _ = store.create_job(submission(), None, {})
    store.save_outcomes([done(job_id, 0), done(job_id, 1)], [])
    cancelled = ImageOutcome(job_id, 2, 2.0, error=IMAGE_CANCELLED, reason=FailureReason.CANCELLED)
    store.save_outcomes([cancelled], [], cancelled=[CancelMark(job_id, 2.0)])
    detail = store.job_detail(job_id)
    assert detail is not None and detail.state is JobState.CANCELLING
    assert store.job_view(job_id).status is JobStatus.ONGOING  # type: ignore[union-attr]
    assert store.unfinished_jobs()[0].cancelled
    store.save_outcomes([], [job_id])
    view = store.job_view(job_id)
    assert view is not None and view.status is JobStatus.FAILED
    assert view.errors == (StoreError("S2", JOB_CANCELLED),)  # S1 had nothing left
    finished = store.job_detail(job_id)
    assert finished is not None and finished.state is JobState.CANCELLED
    assert (finished.done, finished.failed, finished.cancelled_at) == (2, 1, 2.0)


def test_a_cancelled_job_that_lost_nothing_still_ends_failed(store: JobStore) -> None:
    job_id, _ = store.create_job(submission(), None, {})
    store.save_outcomes([done(job_id, 0)], [], cancelled=[CancelMark(job_id, 1.0)])
    store.save_outcomes([done(job_id, 1), done(job_id, 2)], [job_id])
    view = store.job_view(job_id)
    assert view is not None and view.status is JobStatus.FAILED
    assert view.errors == (StoreError("S1", JOB_CANCELLED), StoreError("S2", JOB_CANCELLED))


def test_closing_a_job_the_database_does_not_hold_saves_the_batch(store: JobStore) -> None:
    """A finished job with no row (a database restored from an older backup, say) is passed
    over; the batch it came with is saved all the same."""
    job_id, _ = store.create_job(submission(), None, {})
    assert store.save_outcomes([done(job_id, 0)], [job_id + 1]) == []
    _total, rows = store.results_page(job_id, 0, 10)
    assert [r.width for r in rows] == [10, None, None]
    assert store.job_view(job_id + 1) is None
    assert store.job_view(job_id).status is JobStatus.ONGOING  # type: ignore[union-attr]


def test_idempotency_conflict_when_the_body_differs(store: JobStore) -> None:
    job_id, _ = store.create_job(submission(), "key", {}, request_hash="a")
    assert store.create_job(submission(), "key", {}, request_hash="a") == (job_id, False)
    with pytest.raises(IdempotencyConflict, match=f"job {job_id}"):
        store.create_job(submission(), "key", {}, request_hash="b")


def test_recent_jobs_newest_first_per_client(store: JobStore) -> None:
    ids = [store.create_job(submission(), None, {}, client_id=c)[0] for c in "abab"]
    total, jobs = store.recent_jobs("a", 0, 10)
    assert total == 2 and [j.job_id for j in jobs] == [ids[2], ids[0]]
    total, jobs = store.recent_jobs(None, 1, 2)
    assert total == 4 and [j.job_id for j in jobs] == [ids[2], ids[1]]
    assert store.job_detail(ids[0], client_id="b") is None


def test_job_totals_count_what_was_kept_not_what_was_tried(store: JobStore) -> None:
    """`/api/jobs`'s total comes from a count kept beside the jobs (no count of every job per
    request): a repeated key and a client nobody used add nothing; a client id that looks like
    a scope name is its own."""
    store.create_job(submission(), "k", {}, client_id="a")
    store.create_job(submission(), "k", {}, client_id="a")  # the same job again
    store.create_job(submission(), None, {}, client_id="")
    store.create_job(submission(), None, {})
    assert [store.recent_jobs(c, 0, 1)[0] for c in (None, "a", "", "nobody", "client:a")] == [
        3, 1, 1, 0, 0
    ]  # fmt: skip


def test_a_database_from_before_job_totals_is_counted_on_opening(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = SqliteStore(path)
    for client in ("a", "a", None):
        store.create_job(submission(), None, {}, client_id=client)
    store._db.execute("DROP TRIGGER jobs_total")
    store._db.execute("DROP TABLE job_totals")
    store._db.execute("DROP TABLE schema_version")  # a release before numbered migrations
    store.close()
    reopened = SqliteStore(path)
    assert (reopened.recent_jobs(None, 0, 1)[0], reopened.recent_jobs("a", 0, 1)[0]) == (3, 2)
    reopened.create_job(submission(), None, {}, client_id="a")
    assert reopened.recent_jobs("a", 0, 1)[0] == 3


def test_callbacks_are_due_once_a_job_ends_until_marked_done(store: JobStore) -> None:
    with_callback = JobSubmission(submission().visits, callback_url="http://cb.test/done")
    job_id, _ = store.create_job(with_callback, None, {})
    assert store.callbacks_due() == []
    store.save_outcomes([done(job_id, i) for i in range(3)], [job_id])
    [due] = store.callbacks_due([job_id])
    assert (due.url, due.view.status) == ("http://cb.test/done", JobStatus.COMPLETED)
    store.mark_callback_done(job_id, 3.0)
    assert store.callbacks_due() == []


def test_database_from_before_job_control_gains_its_columns_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    with sqlite3.connect(path) as old:
        old.executescript(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, submission_key TEXT UNIQUE,"
            " status TEXT NOT NULL, image_count INTEGER NOT NULL, created_at REAL NOT NULL,"
            " finished_at REAL, errors TEXT);"
            "CREATE TABLE results (job_id INTEGER NOT NULL, idx INTEGER NOT NULL, width INTEGER,"
            " height INTEGER, error TEXT, processed_at REAL NOT NULL, node_id TEXT,"
            " PRIMARY KEY (job_id, idx)) WITHOUT ROWID;"
            "INSERT INTO jobs VALUES (1, NULL, 'ongoing', 3, 1.0, NULL, NULL);"
            "INSERT INTO results VALUES (1, 0, 5, 5, NULL, 1.0, NULL), (1, 1, NULL, NULL, 'x', 1.0,"
            " NULL);"
        )
    old.close()
    detail = SqliteStore(path).job_detail(1)
    assert detail is not None and (detail.done, detail.failed, detail.total) == (1, 1, 3)


def cancelled_image(job_id: int, index: int) -> ImageOutcome:
    return ImageOutcome(job_id, index, 2.0, error=IMAGE_CANCELLED, reason=FailureReason.CANCELLED)


@pytest.mark.parametrize(("position", "errors"), [(2, ["S2"]), (0, ["S1", "S2"])])
def test_a_cancel_counts_only_the_outcomes_placed_before_it(
    store: JobStore, position: int, errors: list[str]
) -> None:
    # The race of a cancel with a flush: S1's images settled before the cancel but reach the
    # database in the cancel's own batch. Placed before it, S1 is not named as cancelled.
    job_id, _ = store.create_job(submission(), None, {})
    outcomes = [done(job_id, 0), done(job_id, 1), cancelled_image(job_id, 2)]
    store.save_outcomes(outcomes, [job_id], cancelled=[CancelMark(job_id, 2.0, position)])
    view = store.job_view(job_id)
    assert view is not None and [e.store_id for e in view.errors] == errors


def test_one_result_that_cannot_be_stored_fails_alone(store: JobStore) -> None:
    job_id, _ = store.create_job(submission(), None, {})
    too_wide = ImageOutcome(
        job_id, 1, 1.0, width=2**70, height=1
    )  # past SQLite's INTEGER and bigint
    unstorable = store.save_outcomes([done(job_id, 0), too_wide, done(job_id, 2)], [job_id])
    assert unstorable == [too_wide]
    _total, rows = store.results_page(job_id, 0, 10)
    assert [(r.width, r.error) for r in rows] == [(10, None), (None, UNSTORABLE_RESULT), (10, None)]
    detail = store.job_detail(job_id)
    assert detail is not None and (detail.state, detail.done, detail.failed) == (
        JobState.FAILED, 2, 1
    )  # fmt: skip


def test_error_text_that_is_not_utf8_is_stored_readable(store: JobStore) -> None:
    # aiohttp hands over an origin's undecodable header bytes as lone surrogates.
    job_id, _ = store.create_job(submission(), None, {})
    garbled = ImageOutcome(job_id, 0, 1.0, error="redirected to ftp://a/\udcff" + "x" * 10**6)
    assert store.save_outcomes([garbled], []) == []
    _total, [row, *_] = store.results_page(job_id, 0, 10)
    assert row.error is not None and row.error.startswith("redirected to ftp://a/\ufffdxxx")
    assert len(row.error) <= 2500 and row.error.endswith("...")


def test_a_visit_is_stored_once_whatever_its_images(database: StoreDatabase) -> None:
    store = database.open()
    urls = tuple(f"http://a.test/{i}" for i in range(500))
    long_store = "S" * 256
    job_id, _ = store.create_job(JobSubmission((Visit(long_store, "2025-01-01", urls),)), None, {})
    assert database.sql("SELECT COUNT(*) FROM visits") == [(1,)]
    [(stored,)] = database.sql("SELECT SUM(LENGTH(url)) FROM images")
    assert stored == sum(map(len, urls))
    _total, rows = store.results_page(job_id, 498, 10)
    assert [(r.store_id, r.image_url) for r in rows] == [
        (long_store, "http://a.test/498"), (long_store, "http://a.test/499"),
    ]  # fmt: skip


def test_database_with_visit_fields_on_every_image_is_split_on_opening(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = SqliteStore(path)
    job_id, _ = store.create_job(submission(), None, {})
    store.save_outcomes([done(job_id, 1)], [])
    store.close()
    with sqlite3.connect(path) as old:  # the layout before visits had a table
        old.executescript(
            "DROP TABLE visits; DROP TABLE images; DROP TABLE schema_version;"
            "CREATE TABLE images (job_id INTEGER NOT NULL, idx INTEGER NOT NULL,"
            " store_id TEXT NOT NULL, visit_time TEXT NOT NULL, url TEXT NOT NULL,"
            " PRIMARY KEY (job_id, idx)) WITHOUT ROWID;"
            f"INSERT INTO images VALUES ({job_id}, 0, 'S1', '2025-01-01', 'http://a.test/1'),"
            f" ({job_id}, 1, 'S1', '2025-01-01', 'http://a.test/2'),"
            f" ({job_id}, 2, 'S2', '2025-01-02', 'http://a.test/3');"
        )
    old.close()
    reopened = SqliteStore(path)
    total, rows = reopened.results_page(job_id, 0, 10)
    assert total == 3
    assert [(r.store_id, r.visit_time, r.image_url, r.width) for r in rows] == [
        ("S1", "2025-01-01", "http://a.test/1", None),
        ("S1", "2025-01-01", "http://a.test/2", 10),
        ("S2", "2025-01-02", "http://a.test/3", None),
    ]
    reopened.save_outcomes([done(job_id, 0), done(job_id, 2, 7)], [job_id])
    assert reopened.job_view(job_id).status is JobStatus.COMPLETED  # type: ignore[union-attr]


def test_job_and_cancel_commits_are_synced_other_batches_are_not(tmp_path: Path) -> None:
    # A 201 and a 202 promise what a power loss must not undo: those commits run with
    # synchronous=FULL, which syncs the WAL at COMMIT; result batches keep NORMAL.
    store = SqliteStore(tmp_path / "db.sqlite3")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)

    def sync_mode_at_commit() -> str:
        commit = max(i for i, s in enumerate(statements) if s == "COMMIT")
        modes = [s for s in statements[:commit] if s.startswith("PRAGMA synchronous")]
        statements.clear()
        return modes[-1] if modes else ""

    job_id, _ = store.create_job(submission(), None, {})
    assert sync_mode_at_commit() == "PRAGMA synchronous=FULL"
    store.save_outcomes([done(job_id, 0)], [])
    assert sync_mode_at_commit() == ""
    store.save_outcomes([cancelled_image(job_id, 1)], [], cancelled=[CancelMark(job_id, 1.0)])
    assert sync_mode_at_commit() == "PRAGMA synchronous=FULL"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL again


def test_one_holder_at_a_time_has_the_dispatch_lease(database: StoreDatabase) -> None:
    store, other = database.open(), database.open()
    assert store.hold_lease("a", 60)
    assert store.hold_lease("a", 60)  # renewed
    assert not other.hold_lease("b", 60)
    store.release_lease("b")  # not b's to give up
    assert not other.hold_lease("b", 60)
    store.release_lease("a")
    assert other.hold_lease("b", 60)
    assert not store.hold_lease("a", 60)


def test_an_expired_lease_passes_to_the_next_holder(store: JobStore) -> None:
    assert store.hold_lease("a", 0.05)
    assert not store.hold_lease("b", 60)
    time.sleep(0.1)
    assert store.hold_lease("b", 60)
    assert not store.hold_lease("a", 60)


def test_a_result_without_its_time_fails_alone_rather_than_vanish(store: JobStore) -> None:
    job_id, _ = store.create_job(submission(), None, {})
    timeless = ImageOutcome(job_id, 1, None, width=5, height=5)  # type: ignore[arg-type]
    unstorable = store.save_outcomes([done(job_id, 0), timeless, done(job_id, 2)], [job_id])
    assert unstorable == [timeless]
    _total, rows = store.results_page(job_id, 0, 10)
    assert [(r.width, r.error) for r in rows] == [(10, None), (None, UNSTORABLE_RESULT), (10, None)]
    detail = store.job_detail(job_id)
    assert detail is not None and (detail.state, detail.done, detail.failed) == (
        JobState.FAILED, 2, 1
    )  # fmt: skip


def test_a_sqlite_lease_set_before_the_clock_stepped_back_is_over(tmp_path: Path) -> None:
    """The clock stepped back an hour after an unclean stop: the lease left by the old holder
    now seems to run an hour more. One ending more than a lease from now is taken as over, so
    the only tracker does not stand by for an hour."""
    store = SqliteStore(tmp_path / "db.sqlite3")
    assert store.hold_lease("old cluster", 15)
    store._db.execute("UPDATE leases SET expires_at = expires_at + 3600")  # the step back
    assert store.hold_lease("new cluster", 15)
    assert not store.hold_lease("old cluster", 15)  # and a lease of its length still holds
