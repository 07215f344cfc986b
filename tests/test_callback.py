"""The completion callback sender against the loopback server, without Ray."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from core.callback import CallbackLimits, CallbackSender
from core.images.urlguard import AddressPolicy
from harness.imageserver import ImageServer

FAST = CallbackLimits(attempts=3, backoff=0.01, timeout=5)
BODY = {"status": "completed", "job_id": 7}


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    running = ImageServer().start()
    yield running
    running.stop()


def deliver(url: str, policy: AddressPolicy) -> tuple[int, str | None]:
    async def run() -> tuple[int, str | None]:
        sender = CallbackSender(FAST, policy)
        try:
            return await sender.deliver(url, BODY)
        finally:
            await sender.close()

    return asyncio.run(run())


LOOPBACK_ALLOWED = AddressPolicy.from_entries(allow_private=True, entries=())


def test_delivered_after_retryable_failures(server: ImageServer) -> None:
    key = uuid.uuid4().hex
    assert deliver(server.url(f"callback/2/{key}"), LOOPBACK_ALLOWED) == (3, None)
    assert server.callbacks[key] == [BODY]


@pytest.mark.parametrize("code", [408, 425, 429, 500, 502])
def test_timeouts_too_early_too_many_requests_and_5xx_are_retried(
    server: ImageServer, code: int
) -> None:
    # The README's retried answers beside 503 (above). Broken by a RETRYABLE_CODES that lacks
    # one of them: the sender would give up after the first answer.
    key = uuid.uuid4().hex
    assert deliver(server.url(f"callback/2/{key}?answer={code}"), LOOPBACK_ALLOWED) == (3, None)
    assert server.callbacks[key] == [BODY]


@pytest.mark.parametrize("code", [400, 409, 410, 413])
def test_other_client_errors_are_final(server: ImageServer, code: int) -> None:
    key = uuid.uuid4().hex
    url = server.url(f"callback/1/{key}?answer={code}")
    assert deliver(url, LOOPBACK_ALLOWED) == (1, f"HTTP {code}")
    assert server.hits[f"/callback/1/{key}?answer={code}"] == 1


def test_gives_up_after_the_last_attempt(server: ImageServer) -> None:
    key = uuid.uuid4().hex
    assert deliver(server.url(f"callback/5/{key}"), LOOPBACK_ALLOWED) == (3, "HTTP 503")
    assert key not in server.callbacks


def test_a_refusing_receiver_is_asked_once(server: ImageServer) -> None:
    assert deliver(server.url("no/such/hook"), LOOPBACK_ALLOWED) == (1, "HTTP 404")
    assert server.hits["/no/such/hook"] == 1


def test_callback_to_a_private_address_is_refused_without_traffic(server: ImageServer) -> None:
    key = uuid.uuid4().hex
    guarded = AddressPolicy.from_entries(allow_private=False, entries=())
    attempts, failure = deliver(server.url(f"callback/0/{key}"), guarded)
    assert attempts == 1 and failure == (
        "refused: the address is not public (IMAGE_SERVICE_ALLOW_PRIVATE_URLS=1 allows it)"
    )
    assert server.hits[f"/callback/0/{key}"] == 0


def test_a_host_named_in_the_allow_list_gets_its_callback_with_the_guard_on(
    server: ImageServer,
) -> None:
    # As for image downloads: `localhost` is trusted by name; 127.0.0.1 stays refused.
    allow_localhost = AddressPolicy.from_entries(allow_private=False, entries=("localhost",))
    key = uuid.uuid4().hex
    assert deliver(f"http://localhost:{server.port}/callback/0/{key}", allow_localhost) == (1, None)
    assert server.callbacks[key] == [BODY]
    refused = deliver(server.url(f"callback/0/{uuid.uuid4().hex}"), allow_localhost)
    assert refused[1] is not None and refused[1].startswith("refused:")
