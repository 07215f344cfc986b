"""Deadlines of job store calls (core/jobstore/deadline.py), on a clock the tests move."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from core.errors import DatabaseTimedOut, DatabaseUnavailable, StorageError
from core.jobstore.deadline import StoreDeadlines, Watchdog
from core.jobstore.sqlite.store import SqliteStore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_call_past_its_deadline_is_aborted_and_fails_as_unavailable() -> None:
    clock = Clock()
    watchdog = Watchdog(clock)
    deadlines = StoreDeadlines(2.0, probe_interval=1.0, clock=clock, watchdog=watchdog)
    aborted: list[str] = []
    with (
        pytest.raises(DatabaseTimedOut, match="within 2 s"),
        deadlines.call(lambda: aborted.append("cut")),
    ):
        clock.now += 1.9
        assert watchdog.abort_overdue() == 0  # not yet
        clock.now += 0.2
        assert watchdog.abort_overdue() == 1
        raise OSError("the socket was shut down")  # what the abort makes the call raise
    assert aborted == ["cut"]
    assert not deadlines.answering


def test_a_call_within_its_deadline_is_left_alone() -> None:
    clock = Clock()
    watchdog = Watchdog(clock)
    deadlines = StoreDeadlines(2.0, clock=clock, watchdog=watchdog)
    with deadlines.call(lambda: pytest.fail("aborted a call in time")):
        clock.now += 1.0
    clock.now += 5.0
    assert watchdog.abort_overdue() == 0  # nothing left watched after the call
    assert deadlines.answering


def test_while_not_answering_calls_fail_at_once_but_one_probe_a_second() -> None:
    clock = Clock()
    deadlines = StoreDeadlines(2.0, probe_interval=1.0, clock=clock, watchdog=Watchdog(clock))
    deadlines.down()
    with pytest.raises(DatabaseUnavailable, match="has not answered for 0 s") as refused:
        deadlines.admit()
    assert not isinstance(refused.value, DatabaseTimedOut)  # refused, not cut off
    clock.now += 1.0
    deadlines.admit()  # the probe goes through...
    with pytest.raises(DatabaseUnavailable):
        deadlines.admit()  # ...alone
    deadlines.up()  # it was answered
    deadlines.admit()
    deadlines.admit()


def test_an_error_of_a_call_not_aborted_is_its_own() -> None:
    deadlines = StoreDeadlines(2.0, watchdog=Watchdog(Clock()))
    with pytest.raises(KeyError), deadlines.call(lambda: None):
        raise KeyError("x")
    assert deadlines.answering


def test_the_watchdog_thread_cuts_a_real_sqlite_call_off(tmp_path: Path) -> None:
    """A SQLite statement that runs past the deadline is interrupted by the watchdog's thread
    (real time: 0.3 s), and the next call fails at once instead of waiting its turn."""
    store = SqliteStore(tmp_path / "db.sqlite3", timeout=0.3)
    # Stands in for a disk that stalls: a statement that would run for minutes.
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT max(i) FROM n"
    began = time.monotonic()
    with pytest.raises(DatabaseUnavailable), store._calls.guarded():
        store._db.execute(endless).fetchone()
    assert time.monotonic() - began < 2
    began = time.monotonic()
    with pytest.raises(StorageError):
        store.job_view(1)
    assert time.monotonic() - began < 0.1
    time.sleep(1.0)  # a probe is due: it is answered, and the store answers again
    assert store.job_view(1) is None
    assert store.job_view(1) is None


def test_a_sqlite_write_stuck_behind_another_writer_fails_within_the_deadline(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock (a backup, a stuck tool): the call fails at its
    deadline, not at SQLite's own busy timeout of 5 s."""
    path = tmp_path / "db.sqlite3"
    store = SqliteStore(path, timeout=0.5)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    try:
        began = time.monotonic()
        with pytest.raises(StorageError):
            store.hold_lease("a", 60)
        assert time.monotonic() - began < 2.5
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_the_watchdog_runs_on_its_own_thread() -> None:
    watchdog = Watchdog()
    fired = threading.Event()
    watchdog.watch(0.05, fired.set)
    assert fired.wait(2), "the watchdog never aborted the overdue call"


def test_a_watchdog_step_that_raises_leaves_it_watching() -> None:
    # Every deadline in the process hangs on this one thread: a clock that raises once must not
    # end it (the next overdue call would then hang for good).
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        if calls == 2:  # the thread's first step, before the call is overdue
            raise RuntimeError("a clock that fails once")
        return time.monotonic()

    watchdog = Watchdog(clock)
    fired = threading.Event()
    watchdog.watch(0.3, fired.set)
    assert fired.wait(2), "the watchdog stopped after one failing step"


def test_a_replaced_time_sleep_does_not_end_the_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    # A test (or a library) that replaces time.sleep with one that raises, in another thread's
    # interest, once ended the process's one watchdog thread: later deadlines never fired.
    def raising(_seconds: float) -> None:
        raise KeyboardInterrupt

    watchdog = Watchdog()
    monkeypatch.setattr(time, "sleep", raising)
    fired = threading.Event()
    watchdog.watch(0.05, fired.set)
    assert fired.wait(2), "the watchdog thread died in time.sleep"
