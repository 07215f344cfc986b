"""The completion callback: one POST of the job's final status to the client's `callback_url`,
retried with backoff where a retry can help. Its result is only logged: a callback that cannot
be delivered never changes the job."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from core.images.fetch import GuardedSessions, backoff_delay
from core.images.urlguard import AddressPolicy, BlockedAddressError
from core.settings import Settings

RETRYABLE_CODES = frozenset({408, 425, 429})


class CallbackStopped(Exception):
    """The sender may no longer send this callback (it lost the right to, between attempts)."""


@dataclass(frozen=True)
class CallbackLimits:
    attempts: int
    backoff: float  # seconds before the second attempt; doubles after each
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> CallbackLimits:
        return cls(settings.callback_attempts, settings.callback_backoff, settings.callback_timeout)


class CallbackSender:
    """One per process; create and use it inside one event loop. Callback URLs go through the
    same address guard as image URLs: a job cannot make the service call its own network."""

    def __init__(self, limits: CallbackLimits, policy: AddressPolicy) -> None:
        self._limits = limits
        self._sessions = GuardedSessions(
            policy,
            pool_size=32,
            timeout=aiohttp.ClientTimeout(total=limits.timeout),
            headers={"User-Agent": "image-job-service callback"},
        )

    async def close(self) -> None:
        await self._sessions.close()

    async def deliver(
        self, url: str, body: dict[str, Any], may_send: Callable[[], bool] = lambda: True
    ) -> tuple[int, str | None]:
        """POST `body` as JSON until a 2xx answer. Returns the attempts made and None when
        delivered, else the last failure. `CallbackStopped` if `may_send()` turns false
        before an attempt."""
        failure: str | None = None
        attempt = 0
        while attempt < self._limits.attempts:
            if attempt:
                await asyncio.sleep(backoff_delay(attempt - 1, self._limits.backoff))
            if not may_send():
                raise CallbackStopped(url)
            attempt += 1
            try:
                session = self._sessions.for_url(url)
                async with session.post(url, json=body, allow_redirects=False) as response:
                    if 200 <= response.status < 300:
                        return attempt, None
                    failure = f"HTTP {response.status}"
                    if response.status < 500 and response.status not in RETRYABLE_CODES:
                        break  # the receiver refuses this request; asking again will not help
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, BlockedAddressError):
                    return attempt, f"refused: {exc.os_error}"
                failure = f"connection failed: {exc.os_error.strerror or exc}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return attempt, failure
