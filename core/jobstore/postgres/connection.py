"""Connections to the PostgreSQL job database, what the store and the status reader share: a
small pool whose every call is cut off at its deadline, and a database that stops answering
found out once, not by every caller in turn (`StoreDeadlines`)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from core.errors import DatabaseTimedOut, DatabaseUnavailable, StorageError
from core.jobstore.deadline import StoreDeadlines

Connection = psycopg.Connection[tuple[Any, ...]]

# Without a timeout, libpq waits for a server that does not answer as long as TCP does.
CONNECT_TIMEOUT_SECONDS = 5
# A peer that vanished (its host down, the link cut) is found by the kernel: an idle connection
# by keepalives after 5 + 3 * 2 s, one with data unacknowledged after 10 s. A server that is
# there but frozen keeps both alive: the call deadlines (`StoreDeadlines`) cut those off.
TCP_OPTIONS = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 4

Pool = ConnectionPool[psycopg.Connection[tuple[Any, ...]]]


def connection_options(url: str, timeout: float, read_only: bool = False) -> dict[str, Any]:
    """What every connection to `url` is opened with, beside what the URL says itself; with
    `read_only`, every transaction on it is read-only."""
    # Autocommit: the store opens a transaction where it needs one (`PostgresStore`).
    options: dict[str, Any] = {"autocommit": True}
    given = conninfo_to_dict(url)
    options["connect_timeout"] = given.get("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    options.update({name: given.get(name, value) for name, value in TCP_OPTIONS.items()})
    # The server gives up a statement at the call's deadline too (one stuck behind another
    # session's lock, say), so that it does not run on after the caller has given up. The URL's
    # own `options` are kept: a statement_timeout there wins.
    own = str(given.get("options", ""))
    added = []
    if "statement_timeout" not in own:
        added.append(f"-c statement_timeout={max(1, round(timeout * 1000))}")
    if read_only:
        added.append("-c default_transaction_read_only=on")
    if added:
        options["options"] = " ".join([own, *added]).strip()
    return options


def open_pool(
    url: str,
    timeout: float,
    check: Callable[[psycopg.Connection[Any]], None],
    max_size: int = POOL_MAX_SIZE,
    read_only: bool = False,
) -> Pool:
    """A pool of connections to `url`, opened. A server that cannot be reached raises
    psycopg.OperationalError within `timeout`; `check` vets a pooled connection before use."""
    pool: Pool = ConnectionPool(
        url,
        min_size=min(POOL_MIN_SIZE, max_size),
        max_size=max_size,
        timeout=timeout,
        kwargs=connection_options(url, timeout, read_only),
        check=check,
        open=False,
        name="jobstore",
    )
    try:
        pool.open(wait=True, timeout=timeout)
    except BaseException:
        pool.close()
        raise
    return pool


class PostgresConnections:
    """A pool of connections to `url`, opened (`DatabaseUnavailable` if the server does not
    answer within `timeout`), each lent for one call under that call's deadline. A
    `probe_interval` of 0: calls are never refused while the database is not answering."""

    def __init__(
        self,
        url: str,
        timeout: float,
        max_size: int,
        probe_interval: float,
        read_only: bool = False,
    ) -> None:
        try:
            conninfo_to_dict(url)
        except psycopg.Error:
            # Its message may quote the URL, password and all.
            raise StorageError("could not open the job database: its URL is malformed") from None
        self.deadlines = StoreDeadlines(timeout, probe_interval)
        # When the call under way on this thread must end: the pool's check gets what is left.
        self._call_ends = threading.local()
        try:
            self._pool = open_pool(url, timeout, self._check, max_size, read_only)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) and not_answering(exc):
                raise DatabaseUnavailable(f"could not open the job database: {exc}") from exc
            raise StorageError(f"could not open the job database: {exc}") from exc

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def connection(self, timeout: float | None = None, probe: bool = False) -> Iterator[Connection]:
        """A pooled connection for one call, cut off at the call's deadline (the wait for the
        connection included). With `probe`, tried even while the database is not answering."""
        if not probe:
            self.deadlines.admit()
        seconds = self.deadlines.timeout if timeout is None else timeout
        ends = self._call_ends.at = time.monotonic() + seconds
        try:
            with self._pool.connection(timeout=seconds) as db:
                left = max(0.0, ends - time.monotonic())
                with self.deadlines.call(lambda: abort_connection(db), left):
                    yield db
        except PoolTimeout as exc:
            self.deadlines.down()
            raise DatabaseTimedOut(
                f"the job database did not answer within {seconds:g} s; please retry"
            ) from exc
        except psycopg.OperationalError as exc:
            if not_answering(exc):
                self.deadlines.down()
                raise DatabaseUnavailable(f"the job database is not answering: {exc}") from exc
            raise
        self.deadlines.up()

    def _check(self, db: Connection) -> None:
        """Vet a pooled connection before use, within what is left of the call's deadline: the
        server may have dropped it (a restart, a failover), or be frozen."""
        ends = getattr(self._call_ends, "at", time.monotonic() + self.deadlines.timeout)
        with self.deadlines.call(lambda: abort_connection(db), max(0.0, ends - time.monotonic())):
            ConnectionPool.check_connection(db)


def abort_connection(db: Connection) -> None:
    """Cut a connection off where it waits: its socket shut down, the blocked call returns
    with the connection closed. (A cancel request would go to the same frozen server.)"""
    fd = db.pgconn.socket
    with socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def not_answering(exc: psycopg.OperationalError) -> bool:
    """A connection failure (the server gone, a socket cut off), or a statement the server
    cancelled at its statement_timeout (the deadline), not an answer of its own (a full disk)."""
    return exc.sqlstate is None or exc.sqlstate.startswith("08") or exc.sqlstate == "57014"
