"""TrackerClient turns every way a call to the tracker can fail under Ray into an error free of
Ray: the tracker's own domain error as it raised it, `TrackerUnavailable` when it does not
answer, `TrackerCallFailed` when Ray lost the call. Without a cluster: the Ray errors are built
as Ray raises them in the caller."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    ObjectLostError,
    OutOfMemoryError,
    RayActorError,
    RayError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)

from core.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    JobAlreadyFinished,
    NotDispatching,
    RateLimited,
    ServiceBusy,
    StorageError,
    StoreMasterError,
    SubmissionOutcomeUnknown,
    TooManyOpenJobs,
    TrackerUnavailable,
)
from harness.asgi import ScriptedTracker
from service.tracker_client import TrackerCallFailed, TrackerClient

pytestmark = pytest.mark.timeout(30)


def across_ray(exc: Exception) -> Exception:
    """What awaiting an actor call that raised `exc` raises in the caller."""
    try:
        raise exc
    except Exception as raised:
        error = RayTaskError("JobTracker.call", "Traceback (remote)", raised)
    return RayError.from_bytes(error.to_bytes()).as_instanceof_cause()  # type: ignore[no-any-return]


def raised_by_a_call(answer: Any, timeout: float = 5) -> BaseException:
    """What `TrackerClient.status` raises when the tracker's handle answers `answer`."""
    client = TrackerClient(ScriptedTracker(status=answer), timeout)
    with pytest.raises(BaseException) as raised:
        asyncio.run(client.status(7, None))
    return raised.value


DOMAIN_ERRORS = [
    StorageError("disk I/O error"),
    DatabaseUnavailable("the job database did not answer within 5 s; please retry"),
    SubmissionOutcomeUnknown("it may have been kept: a retry with the same key is safe"),
    ServiceBusy("full"),
    NotDispatching("standing by"),
    StoreMasterError("gone"),
    RateLimited(2),
    TooManyOpenJobs("2 jobs are still open"),
    IdempotencyConflict("used for job 3"),
    JobAlreadyFinished("job 3 has already failed"),
]


@pytest.mark.parametrize("exc", DOMAIN_ERRORS, ids=lambda exc: type(exc).__name__)
def test_a_domain_error_across_ray_is_raised_as_itself(exc: Exception) -> None:
    raised = raised_by_a_call(across_ray(exc))
    assert type(raised) is type(exc) and str(raised) == str(exc)
    assert isinstance(raised.__cause__, RayTaskError)  # the remote traceback, for the log


def test_a_rate_limit_keeps_its_wait_across_ray() -> None:
    raised = raised_by_a_call(across_ray(RateLimited(17)))
    assert isinstance(raised, RateLimited) and raised.retry_after == 17


def test_a_cause_ray_could_not_subclass_is_still_raised_as_itself() -> None:
    # Ray then raises a plain RayTaskError; the tracker's error is only its `.cause`.
    plain = RayTaskError("JobTracker.status", "Traceback (remote)", StorageError("locked"))
    raised = raised_by_a_call(plain)
    assert type(raised) is StorageError and str(raised) == "locked"


def test_a_bug_in_the_tracker_is_raised_as_its_own_error() -> None:
    raised = raised_by_a_call(across_ray(KeyError("x")))
    assert type(raised) is KeyError and raised.args == ("x",)


@pytest.mark.parametrize(
    "exc",
    [
        GetTimeoutError("timed out"),
        RayActorError(),
        ActorDiedError(),
        ActorUnavailableError("restarting", None),
        across_ray(TimeoutError("the tracker's own wait ran out")),
        across_ray(ActorDiedError()),
    ],
    ids=["GetTimeoutError", "RayActorError", "ActorDiedError", "ActorUnavailableError",
         "TimeoutError-across-ray", "ActorDiedError-across-ray"],
)  # fmt: skip
def test_a_tracker_that_does_not_answer_is_tracker_unavailable(exc: Exception) -> None:
    raised = raised_by_a_call(exc)
    assert type(raised) is TrackerUnavailable
    assert str(raised).startswith("the tracker did not answer: ")


def test_a_call_past_its_deadline_is_tracker_unavailable() -> None:
    silent = SimpleNamespace(status=SimpleNamespace(remote=lambda *_args: asyncio.sleep(60)))
    client = TrackerClient(silent, timeout=0.01)
    with pytest.raises(TrackerUnavailable, match=r"TimeoutError\(\)") as raised:
        asyncio.run(client.status(7, None))
    assert isinstance(raised.value.__cause__, TimeoutError)


@pytest.mark.parametrize(
    "exc",
    [
        ObjectLostError("00" * 28, None, ""),
        OutOfMemoryError("the node ran out of memory"),
        TaskCancelledError(),
        WorkerCrashedError(),
        RayTaskError("JobTracker.status", "Traceback (remote)", None),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_a_call_ray_lost_is_tracker_call_failed(exc: Exception) -> None:
    raised = raised_by_a_call(exc)
    assert type(raised) is TrackerCallFailed and raised.__cause__ is exc


def test_a_ray_error_raised_when_the_call_is_sent_is_translated_too() -> None:
    def send(*_args: Any) -> Any:
        raise ActorDiedError()

    dead = SimpleNamespace(ping=SimpleNamespace(remote=send))
    with pytest.raises(TrackerUnavailable):
        asyncio.run(TrackerClient(dead, timeout=5).ping(timeout=5))


def test_no_ray_error_leaves_the_client() -> None:
    answers: list[Any] = [across_ray(exc) for exc in DOMAIN_ERRORS] + [
        GetTimeoutError("t"),
        ActorDiedError(),
        ActorUnavailableError("restarting", None),
        OutOfMemoryError("oom"),
        across_ray(KeyError("x")),
    ]
    for answer in answers:
        assert not isinstance(raised_by_a_call(answer), RayError), answer


def test_answers_pass_as_the_tracker_gave_them() -> None:
    tracker = ScriptedTracker(ping="node-1", jobs=(3, ()))
    client = TrackerClient(tracker, 5)
    assert asyncio.run(client.ping(timeout=1)) == "node-1"
    assert asyncio.run(client.jobs("c", 0, 10)) == (3, [])
    assert tracker.calls == [("ping", ()), ("jobs", ("c", 0, 10))]
