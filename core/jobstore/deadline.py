"""Deadlines for job store calls, on both backends.

A call that overruns its deadline is cut off where it waits (its connection aborted: the
PostgreSQL socket shut down, a SQLite statement interrupted) and fails as `DatabaseUnavailable`.
From then on the store is taken as not answering: calls fail at once, and one call at a time
goes through as a probe every `probe_interval` seconds, until one succeeds. So a frozen or
unreachable database costs the first caller its deadline and every later one nothing: no thread,
no request and no lease renewal queues behind it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from core.errors import DatabaseTimedOut, DatabaseUnavailable

log = logging.getLogger(__name__)

# How often the watchdog looks for overrun calls: the precision of every deadline.
WATCH_INTERVAL_SECONDS = 0.05
# Recording a job takes longer the more images it has: 275 ms for 10,000 on PostgreSQL,
# 165 ms on SQLite (make bench), so its deadline grows by about 7 times that per image.
CREATE_SECONDS_PER_IMAGE = 0.0002
# A call's deadline where no setting gives one (IMAGE_SERVICE_DATABASE_TIMEOUT sets the
# tracker's and the API's).
DEFAULT_TIMEOUT_SECONDS = 5.0
# While the database is not answering, one call this often tries it.
PROBE_INTERVAL_SECONDS = 1.0


@dataclass
class _Watched:
    deadline: float
    abort: Callable[[], None]
    fired: bool = False
    ended: bool = False
    # Held while aborting: a call that ends meanwhile waits for it, so an abort never lands on
    # the next call to use the same connection.
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Watchdog:
    """One thread that aborts the calls past their deadline. Started on first use; a daemon,
    so it never holds a process open."""

    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _watched: dict[int, _Watched] = field(default_factory=dict)
    _next_token: int = 0
    _thread: threading.Thread | None = None

    def watch(self, seconds: float, abort: Callable[[], None]) -> int:
        """Call `abort` (from the watchdog's thread) if `unwatch` has not come `seconds` from
        now; returns the token for `unwatch`."""
        with self._lock:
            self._next_token += 1
            self._watched[self._next_token] = _Watched(self.clock() + seconds, abort)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
                self._thread.start()
            return self._next_token

    def unwatch(self, token: int) -> bool:
        """Stop watching; True if the call was aborted meanwhile. Waits for an abort under
        way, so none lands after it returns."""
        with self._lock:
            watched = self._watched.pop(token, None)
        if watched is None:
            return False
        with watched.lock:
            watched.ended = True
        return watched.fired

    def abort_overdue(self) -> int:
        """Abort every call past its deadline now; returns how many. The thread's one step."""
        now = self.clock()
        with self._lock:
            overdue = [w for w in self._watched.values() if not w.fired and w.deadline <= now]
            for watched in overdue:
                watched.fired = True
        for watched in overdue:
            with watched.lock:
                if watched.ended:
                    continue  # it ended as it was found overdue: nothing to cut off
                try:
                    watched.abort()
                except Exception:  # the call is cut off some other way, or has just ended
                    log.exception("aborting a job store call past its deadline failed")
        return len(overdue)

    def _run(self) -> None:
        # Every deadline in the process hangs on this loop: an iteration that raises is logged
        # and the loop goes on. (An Event's wait, not time.sleep, which a caller may replace.)
        pause = threading.Event()
        while True:
            pause.wait(WATCH_INTERVAL_SECONDS)
            try:
                self.abort_overdue()
            except Exception:
                log.exception("the deadline watchdog's step failed; it goes on")


WATCHDOG = Watchdog()


class StoreDeadlines:
    """The deadline of one store's calls and whether its database is answering. With a
    `probe_interval` of 0 no call is ever refused: each tries the database (the lease's
    renewals, one at a time and each one needed)."""

    def __init__(
        self,
        timeout: float,
        probe_interval: float = PROBE_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        watchdog: Watchdog = WATCHDOG,
    ) -> None:
        self.timeout = timeout
        self._probe_interval = probe_interval
        self._clock = clock
        self._watchdog = watchdog
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._next_probe = 0.0

    @property
    def answering(self) -> bool:
        return self._down_since is None

    def admit(self) -> None:
        """Raise `DatabaseUnavailable` at once while the database is not answering, except
        for one probe every `probe_interval` seconds."""
        with self._lock:
            if self._down_since is None or not self._probe_interval:
                return
            now = self._clock()
            if now >= self._next_probe:
                # No other probe until this one is answered or cut off (`up`, `down`).
                self._next_probe = now + self.timeout + self._probe_interval
                return
            down_for = now - self._down_since
        raise DatabaseUnavailable(
            f"the job database has not answered for {down_for:.0f} s; please retry"
        )

    @contextmanager
    def call(self, abort: Callable[[], None], timeout: float | None = None) -> Iterator[None]:
        """Run the block with `abort` called at its deadline; an aborted block raises
        `DatabaseUnavailable`, whatever error the abort made it raise."""
        seconds = self.timeout if timeout is None else timeout
        token = self._watchdog.watch(seconds, abort)
        try:
            yield
        except BaseException as exc:
            if self._watchdog.unwatch(token):
                self.down()
                raise DatabaseTimedOut(
                    f"the job database did not answer within {seconds:g} s; please retry"
                ) from exc
            raise
        # Aborted as it ended, or not: it was answered, and the answer is good.
        self._watchdog.unwatch(token)

    def down(self) -> None:
        """The database did not answer: later calls fail at once, bar the probes."""
        if not self._probe_interval:
            return
        with self._lock:
            now = self._clock()
            if self._down_since is None:
                self._down_since = now
                log.error("the job database is not answering; calls fail at once until it does")
            self._next_probe = now + self._probe_interval

    def up(self) -> None:
        """A call was answered: the database is back."""
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is not None:
                log.warning("the job database answers again")
            self._down_since = None
