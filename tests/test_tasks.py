"""BackgroundTasks: one-off tasks held until they end, their failures logged, not lost."""

from __future__ import annotations

import asyncio

import pytest

from core.errors import StorageError
from core.tasks import BackgroundTasks

pytestmark = pytest.mark.timeout(10)


def test_a_failing_background_task_is_logged_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        tasks = BackgroundTasks()

        async def fails() -> None:
            raise StorageError("could not read the callbacks due: disk I/O error")

        tasks.spawn(fails())
        await asyncio.sleep(0.01)
        assert tasks.running() == set()

    asyncio.run(scenario())
    assert "a background task failed" in caplog.text
    assert "disk I/O error" in caplog.text


def test_a_task_is_held_until_it_ends_and_a_cancelled_one_is_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        tasks = BackgroundTasks()
        release = asyncio.Event()

        async def waits() -> None:
            await release.wait()

        waiting = tasks.spawn(waits())
        cancelled = tasks.spawn(asyncio.sleep(10))
        await asyncio.sleep(0)
        assert tasks.running() == {waiting, cancelled}
        cancelled.cancel()
        release.set()
        await asyncio.sleep(0.01)
        assert tasks.running() == set()

    asyncio.run(scenario())
    assert "a background task failed" not in caplog.text
