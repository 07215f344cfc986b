"""The job store's thread (core/jobstore/dbthread.py): failed calls are told by kind."""

from __future__ import annotations

import asyncio

import pytest

from core.errors import (
    DatabaseTimedOut,
    DatabaseUnavailable,
    IdempotencyConflict,
    StorageError,
    SubmissionOutcomeUnknown,
)
from core.jobstore.dbthread import STORE_ERROR_KINDS, DatabaseThread, store_error_kind

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (DatabaseTimedOut("did not answer within 5 s"), "timeout"),
        (DatabaseUnavailable("has not answered for 12 s"), "unavailable"),
        (SubmissionOutcomeUnknown("stopped answering while committing"), "unavailable"),
        (StorageError("could not save results: disk I/O error"), "other"),
    ],
)
def test_a_failed_call_is_told_by_kind_and_raised_as_it_was(exc: Exception, kind: str) -> None:
    told: list[str] = []
    db = DatabaseThread(failed=told.append)

    def call() -> None:
        raise exc

    with pytest.raises(type(exc)) as raised:
        asyncio.run(db.run(call))
    assert (raised.value, told) == (exc, [kind])
    assert kind in STORE_ERROR_KINDS
    assert store_error_kind(exc) == kind  # type: ignore[arg-type]


def test_answers_and_refusals_that_are_not_store_errors_are_not_failures() -> None:
    told: list[str] = []
    db = DatabaseThread(failed=told.append)

    def conflict() -> None:
        raise IdempotencyConflict("the key names another body")

    assert asyncio.run(db.run(lambda: 7)) == 7
    with pytest.raises(IdempotencyConflict):
        asyncio.run(db.run(conflict))
    assert told == []
