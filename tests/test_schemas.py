"""The bodies built outside the API's routes agree with the response models the routes declare:
the status body the edge and the completion callback send (`status_payload`), and the edge's
own error body. (The routes' answers themselves are pinned byte for byte in test_app.py.)"""

from __future__ import annotations

import asyncio

import pytest

from core.models import JobStatus, JobView, StoreError, status_payload
from harness.asgi import App, call
from service.edge import ServeHeaderGuard
from service.schemas import ErrorBody, StatusBody, status_body

VIEWS = [
    JobView(1, JobStatus.ONGOING),
    JobView(2, JobStatus.COMPLETED),
    JobView(3, JobStatus.FAILED),
    JobView(4, JobStatus.FAILED, (StoreError("S\u00e9", "HTTP 404"), StoreError("S2", "x"))),
]


@pytest.mark.parametrize("view", VIEWS)
def test_the_status_payload_is_a_status_body_field_for_field(view: JobView) -> None:
    payload = status_payload(view)
    body = StatusBody.model_validate(payload, strict=True)
    # The same keys in the same order: what the API sends is what the edge sends.
    assert body.model_dump(exclude_unset=True) == payload
    assert list(body.model_dump(exclude_unset=True)) == list(payload)
    assert status_body(view) == body


def test_a_status_view_of_another_status_is_refused_by_the_model() -> None:
    with pytest.raises(ValueError, match="status"):
        StatusBody.model_validate({"status": "cancelled", "job_id": 1})


def test_the_header_guard_s_answer_is_an_error_body() -> None:
    status, _headers, body = asyncio.run(
        call(ServeHeaderGuard(App()), [(b"x-request-id", b"\xff")])
    )
    assert status == 400
    assert ErrorBody.model_validate(body, strict=True).model_dump() == body
