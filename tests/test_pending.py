from __future__ import annotations

from core.jobstore.records import CancelMark
from core.models import ImageOutcome
from core.pending import PendingWrites


def outcome(index: int) -> ImageOutcome:
    return ImageOutcome(1, index, processed_at=1.0, width=1, height=1)


def test_a_cancel_keeps_its_place_among_the_outcomes() -> None:
    pending = PendingWrites()
    pending.outcomes += [outcome(0), outcome(1)]
    pending.cancel(1, 5.0)
    pending.outcomes.append(outcome(2))
    taken = pending.take()
    assert not pending and taken.cancels == [CancelMark(1, 5.0, position=2)]


def test_restore_puts_a_failed_batch_back_ahead_of_what_came_since() -> None:
    pending = PendingWrites()
    pending.outcomes.append(outcome(0))
    pending.started.append((1, 1.0))
    pending.cancel(1, 2.0)
    pending.finished.append(7)
    taken = pending.take()
    # While the write failed, more arrived: another outcome, then another job's cancel.
    pending.outcomes.append(outcome(1))
    pending.cancel(2, 3.0)
    pending.finished.append(8)
    pending.restore(taken)
    assert [o.index for o in pending.outcomes] == [0, 1]
    assert pending.cancels == [CancelMark(1, 2.0, 1), CancelMark(2, 3.0, 2)]
    assert (pending.finished, pending.started) == ([7, 8], [(1, 1.0)])
