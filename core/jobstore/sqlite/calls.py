"""The deadline of a SQLite connection's calls (`StoreDeadlines` for both backends).

SQLite offers two ways to stop a call, and a deadline needs both: `interrupt()` ends the
statement running at that moment, and the progress handler ends one that starts after it (an
interrupt that lands while `executemany` is between two rows is otherwise lost). Neither ends
a wait for another writer's lock: the busy timeout, set to the deadline, does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from core.jobstore.deadline import StoreDeadlines

# The progress handler runs every this many virtual machine steps: about 10 µs of work.
PROGRESS_STEPS = 1000


class SqliteCalls:
    def __init__(self, db: sqlite3.Connection, deadlines: StoreDeadlines) -> None:
        self.db = db
        self.deadlines = deadlines
        self._overdue = False
        db.execute(f"PRAGMA busy_timeout={round(deadlines.timeout * 1000)}")
        db.set_progress_handler(self._progress, PROGRESS_STEPS)

    @contextmanager
    def guarded(self, extra_seconds: float = 0.0) -> Iterator[None]:
        """One call, cut off `extra_seconds` past the store's deadline; `DatabaseUnavailable`
        if it was, or if the database is taken as not answering."""
        self.deadlines.admit()
        self._overdue = False
        with self.deadlines.call(self._abort, self.deadlines.timeout + extra_seconds):
            yield
        self.deadlines.up()

    def _abort(self) -> None:
        self._overdue = True
        self.db.interrupt()

    def _progress(self) -> int:
        return int(self._overdue)
