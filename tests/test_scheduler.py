from __future__ import annotations

from core.scheduler import FairQueue


def drain(queue: FairQueue) -> list[tuple[int, int]]:
    taken = []
    while (item := queue.take()) is not None:
        taken.append(item)
    return taken


def test_jobs_take_turns() -> None:
    queue = FairQueue()
    queue.add(1, range(5))
    queue.add(2, range(2))
    assert drain(queue) == [(1, 0), (2, 0), (1, 1), (2, 1), (1, 2), (1, 3), (1, 4)]


def test_a_late_small_job_waits_one_round_not_for_the_big_one() -> None:
    queue = FairQueue()
    queue.add(1, range(10_000))
    assert queue.take() == (1, 0)
    queue.add(2, [0, 1])
    taken = [queue.take(), queue.take(), queue.take(), queue.take()]
    assert taken.index((2, 0)) <= 1 and (2, 1) in taken


def test_requeue_goes_first_and_counts() -> None:
    queue = FairQueue()
    queue.add(1, [1, 2])
    queue.requeue(1, 0)
    queue.requeue(3, 7)
    assert len(queue) == 4
    assert drain(queue) == [(3, 7), (1, 0), (1, 1), (1, 2)]


def test_drop_job() -> None:
    queue = FairQueue()
    queue.add(1, range(3))
    queue.add(2, range(2))
    assert queue.drop_job(1) == 3
    assert len(queue) == 2 and queue.drop_job(1) == 0
    assert drain(queue) == [(2, 0), (2, 1)]


def test_the_oldest_wait_is_that_of_the_longest_waiting_job_still_queued() -> None:
    now = [100.0]
    queue = FairQueue(clock=lambda: now[0])
    assert queue.oldest_since() is None
    queue.add(1, [0, 1])
    now[0] = 105.0
    queue.add(2, [0])
    queue.requeue(3, 7)  # put back after a lost worker, at 105 too
    assert queue.oldest_since() == 100.0
    queue.take(), queue.take()  # job 1's image 0, then job 2's only one
    assert queue.oldest_since() == 100.0  # job 1 still has image 1 waiting
    queue.drop_job(1)
    assert queue.oldest_since() == 105.0
    queue.take()
    assert (len(queue), queue.oldest_since()) == (0, None)
