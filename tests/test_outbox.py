"""The image worker's outbox without Ray: outcomes reach the tracker in batches, and a batch
the tracker did not take is sent again."""

from __future__ import annotations

import asyncio

import pytest

from core.models import ImageOutcome
from core.outbox import Outbox
from core.supervise import supervise


def outcome(index: int) -> ImageOutcome:
    return ImageOutcome(1, index, processed_at=1.0, width=10, height=10)


class Tracker:
    """Takes reports after refusing the first `refusals` of them, as a tracker that is being
    restarted does; keeps the image indexes of each report it took."""

    def __init__(self, refusals: int = 0) -> None:
        self.refusals = refusals
        self.taken: list[list[int]] = []

    async def report(self, batch: list[ImageOutcome]) -> None:
        if self.refusals:
            self.refusals -= 1
            raise ConnectionError("the tracker is restarting")
        self.taken.append([item.index for item in batch])


def test_a_report_the_tracker_did_not_take_is_sent_again_first() -> None:
    # The README's "a report the tracker did not take is sent again". Broken by an outbox that
    # forgets a batch whose send failed, or sends it behind the outcomes that came after it.
    async def run() -> tuple[list[list[int]], int]:
        tracker = Tracker(refusals=1)
        outbox = Outbox(tracker.report, interval=0)
        outbox.add(outcome(0))
        outbox.add(outcome(1))
        with pytest.raises(ConnectionError):
            await outbox.report_step()
        outbox.add(outcome(2))
        await outbox.report_step()
        return tracker.taken, len(outbox)

    assert asyncio.run(run()) == ([[0, 1, 2]], 0)


def test_the_supervised_report_loop_goes_on_until_the_tracker_takes_it() -> None:
    # As the worker runs it: under `supervise`, which logs each refused report and goes on.
    async def run() -> list[list[int]]:
        tracker = Tracker(refusals=3)
        outbox = Outbox(tracker.report, interval=0.01)
        loop = supervise("report", outbox.report_step, pause=0.01)
        outbox.add(outcome(0))
        try:
            while not tracker.taken:
                await asyncio.sleep(0.01)
        finally:
            loop.cancel()
        return tracker.taken

    assert asyncio.run(asyncio.wait_for(run(), timeout=10)) == [[0]]


def test_a_full_batch_goes_without_waiting_for_the_interval() -> None:
    async def run() -> list[list[int]]:
        tracker = Tracker()
        outbox = Outbox(tracker.report, interval=3600, batch=3)
        for index in range(3):
            outbox.add(outcome(index))
        await asyncio.wait_for(outbox.report_step(), timeout=5)
        return tracker.taken

    assert asyncio.run(run()) == [[0, 1, 2]]


def test_an_outcome_sent_now_goes_without_waiting_for_the_interval_or_a_full_batch() -> None:
    """The worker's last image: nothing more will fill the batch, and its job may be waiting."""

    async def run() -> list[list[int]]:
        tracker = Tracker()
        outbox = Outbox(tracker.report, interval=3600, batch=100)
        outbox.add(outcome(0))
        step = asyncio.ensure_future(outbox.report_step())
        await asyncio.sleep(0.05)
        assert not step.done() and tracker.taken == []  # a lone outcome waits for the interval
        outbox.add(outcome(1), now=True)  # ...until the worker holds nothing else
        await asyncio.wait_for(step, timeout=5)
        return tracker.taken

    assert asyncio.run(run()) == [[0, 1]]
