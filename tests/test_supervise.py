from __future__ import annotations

import asyncio
import logging

import pytest

from core.errors import DatabaseUnavailable
from core.supervise import supervise


def test_a_raising_iteration_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    async def step() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("one bad iteration")
        await asyncio.sleep(0)

    async def main() -> None:
        task = supervise("test loop", step, pause=0.01)
        while len(calls) < 5:
            await asyncio.sleep(0.01)
        task.cancel()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert len(calls) >= 5
    [record] = caplog.records
    assert "test loop" in record.getMessage() and record.exc_info is not None
    assert "one bad iteration" in caplog.text


def test_a_loop_that_ends_is_logged_and_started_again(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    class Escapes(BaseException):
        """Not an Exception: gets past the per-iteration guard and ends the task."""

    async def step() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Escapes
        await asyncio.sleep(0.01)

    async def main() -> None:
        supervise("ending loop", step, pause=0.01)
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert len(calls) >= 3
    assert "ending loop: the loop ended" in caplog.text


def test_a_database_that_does_not_answer_is_one_line_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While the database is down every store call fails at once: each iteration says so in
    one line, without a traceback, and the loop goes on after its pause."""
    calls: list[int] = []

    async def step() -> None:
        calls.append(len(calls))
        if len(calls) < 3:
            raise DatabaseUnavailable("the job database has not answered for 3 s; please retry")
        await asyncio.sleep(0)

    async def main() -> None:
        task = supervise("flush", step, pause=0.01)
        while len(calls) < 5:
            await asyncio.sleep(0.01)
        task.cancel()

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    assert len(calls) >= 5
    assert [r.exc_info for r in caplog.records] == [None, None]
    assert all("flush: the job database has not answered" in r.getMessage() for r in caplog.records)
