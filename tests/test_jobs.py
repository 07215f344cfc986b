"""The tracker's job state (core/jobs.py), without Ray: admission, fair batches, suspects,
cancels and live progress."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from core.errors import ServiceBusy, TooManyOpenJobs
from core.jobs import (
    UNKNOWN_STORE,
    ActiveJob,
    JobBook,
    JobLimits,
    unknown_store_failures,
)
from core.models import IMAGE_CANCELLED, ImageOutcome, JobDetail, JobState, JobSubmission, Visit

LIMITS = JobLimits(max_open_jobs_per_client=2, max_queued_images=10, max_image_attempts=2)


def submission(*visits: tuple[str, int]) -> JobSubmission:
    return JobSubmission(
        tuple(
            Visit(store, "2025-01-01", tuple(f"http://a.test/{store}/{i}" for i in range(n)))
            for store, n in visits
        )
    )


def active(book: JobBook, job_id: int, images: int, client: str | None = None) -> ActiveJob:
    job = ActiveJob.submitted(job_id, submission(("S", images)), (), client)
    book.activate(job)
    return job


def done(job_id: int, index: int, error: str | None = None) -> ImageOutcome:
    return ImageOutcome(job_id, index, 1.0, 10, 10, error=error)


def test_unknown_stores_fail_their_own_images_only() -> None:
    failed = unknown_store_failures(submission(("A", 2), ("X", 3), ("A", 1), ("X", 1)), {"A"})
    assert failed == {2: UNKNOWN_STORE, 3: UNKNOWN_STORE, 4: UNKNOWN_STORE, 6: UNKNOWN_STORE}


def test_a_job_submitted_with_failed_images_queues_the_others() -> None:
    book = JobBook(LIMITS)
    job = ActiveJob.submitted(7, submission(("S", 4)), {1, 3}, None)
    book.activate(job)
    assert job.unsettled == 2
    assert [(t.job_id, t.index) for t in book.take_batch(10, set())] == [(7, 0), (7, 2)]
    assert book.pending.started[0][0] == 7


def test_admission_holds_a_place_until_released_and_refuses_past_the_limits() -> None:
    book = JobBook(LIMITS)
    with book.admission("c", 4), book.admission("c", 4):
        with pytest.raises(TooManyOpenJobs, match="2 jobs are still open"), book.admission("c", 1):
            pass
        with pytest.raises(ServiceBusy, match="holds 8 unsettled images"), book.admission(None, 3):
            pass
        with book.admission(None, 2):
            pass
    active(book, 1, 9, "c")
    with pytest.raises(ServiceBusy), book.admission("d", 2):
        pass
    with book.admission("c", 1):  # one open job of two
        pass


def test_a_refused_admission_leaves_nothing_held() -> None:
    book = JobBook(LIMITS)
    with pytest.raises(ServiceBusy), book.admission("c", 11):
        pass
    with book.admission("c", 10), book.admission("c", 0):
        pass


def test_batches_take_jobs_in_turn() -> None:
    book = JobBook(LIMITS)
    active(book, 1, 3)
    active(book, 2, 1)
    batch = book.take_batch(3, set())
    assert [(t.job_id, t.index) for t in batch] == [(1, 0), (2, 0), (1, 1)]
    assert book.waiting == 1


def test_a_duplicate_outcome_is_ignored_and_the_last_finishes_the_job() -> None:
    book = JobBook(LIMITS)
    active(book, 1, 2)
    book.record(done(1, 0))
    book.record(done(1, 0, error="late duplicate"))
    book.record(done(99, 0))  # a job no longer held
    assert [o.error for o in book.pending.outcomes] == [None]
    assert book.pending.finished == []
    book.record(done(1, 1))
    assert book.pending.finished == [1]
    book.finished([1])
    assert book.jobs == {} and book.waiting == 0


def test_an_image_on_dying_workers_is_retried_alone_then_fails() -> None:
    book = JobBook(LIMITS)
    active(book, 1, 3)
    held = {(1, 0), (1, 1)}
    assert [t.index for t in book.take_batch(2, set())] == [0, 1]
    failed, cancelled = book.worker_lost(held)
    assert (failed, cancelled) == ([], 0)
    # A worker holding a suspect gets no second one; a fresh worker gets one suspect first.
    first = book.take_batch(3, set())
    assert [t.index for t in first] == [0, 2]
    assert [t.index for t in book.take_batch(3, {(1, 0)})] == []
    failed, _ = book.worker_lost({(1, 0)})
    assert [(o.index, o.error) for o in failed] == [
        (0, "the image worker died while processing this image, 2 times")
    ]
    assert [t.index for t in book.take_batch(3, set())] == [1]


def test_cancel_settles_the_queued_images_now_and_leaves_those_in_flight() -> None:
    book = JobBook(LIMITS)
    job = active(book, 1, 4)
    book.take_batch(1, set())  # image 0 goes to a worker
    book.record(done(1, 0))
    book.take_batch(1, set())  # image 1 in flight
    assert book.cancel(job, {1}) == 2
    assert [(o.index, o.error) for o in book.pending.outcomes] == [
        (0, None), (2, IMAGE_CANCELLED), (3, IMAGE_CANCELLED)
    ]  # fmt: skip
    assert book.pending.cancels[0].position == 1  # after the outcome that came before it
    assert book.waiting == 0 and job.unsettled == 1
    failed, cancelled = book.worker_lost({(1, 1)})
    assert (failed, cancelled) == ([], 1)
    assert book.pending.finished == [1]


def test_a_job_recovered_while_cancelling_settles_at_once() -> None:
    book = JobBook(LIMITS)
    job = ActiveJob(5, ["u0", "u1"], bytearray([1, 0]), cancelled=True)
    assert book.activate(job) == 1
    assert book.pending.finished == [5] and book.waiting == 0


def test_live_progress_adds_what_is_not_yet_written() -> None:
    book = JobBook(LIMITS)
    active(book, 1, 5)
    book.record(done(1, 0))
    book.record(done(1, 1, error="bad"))
    stored = JobDetail(
        job_id=1, state=JobState.ONGOING, total=5, done=1, failed=0, created_at=0.0,
        started_at=None, finished_at=None, cancelled_at=None, errors=(),
    )  # fmt: skip
    live = book.with_live_progress(stored, in_flight=2)
    assert (live.done, live.failed, live.in_flight) == (2, 1, 2)
    finished = replace(stored, state=JobState.COMPLETED)
    assert book.with_live_progress(finished, in_flight=2) == finished


def test_the_oldest_wait_counts_queued_images_and_those_put_back_after_a_lost_worker() -> None:
    book = JobBook(LIMITS)
    now = time.monotonic()
    assert book.oldest_waiting(now) == 0.0
    active(book, 1, 2)
    batch = book.take_batch(2, set())
    assert book.oldest_waiting(time.monotonic() + 60) == 0.0  # nothing waits
    book.worker_lost({(task.job_id, task.index) for task in batch})  # both become suspects
    assert 59 < book.oldest_waiting(time.monotonic() + 60) < 61
    book.record(done(1, 0))
    book.record(done(1, 1))  # the suspects settled after all (their worker was not dead)
    assert book.oldest_waiting(time.monotonic() + 60) == 0.0
