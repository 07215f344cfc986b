"""Downloading one image over HTTP: streamed under a byte cap, bounded in time, retried with
backoff where a retry can help, redirects followed hop by hop through the address guard."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp

from core.images.nodememory import ImageMemory
from core.images.urlguard import ALLOW_PRIVATE_HINT, AddressPolicy, BlockedAddressError
from core.settings import Settings
from core.text import is_utf8_text, safe_text

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
# How much of a redirect target, which the origin chooses, a failure message quotes: every
# image of a job may fail with it, so it sets how much a job's results can outweigh its body.
QUOTED_LOCATION_CHARS = 100


class ImageDownloadError(Exception):
    """The image could not be fetched; `str()` is the reason given to the client."""


class _RetryableError(ImageDownloadError):
    """A failure that may pass: connection trouble, a timeout, 429 or a 5xx answer."""


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    connect_timeout: float
    read_timeout: float
    total_timeout: float
    retries: int
    backoff: float
    max_redirects: int

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchLimits:
        return cls(
            max_bytes=settings.max_image_bytes,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            total_timeout=settings.download_timeout,
            retries=settings.download_retries,
            backoff=settings.retry_backoff,
            max_redirects=settings.max_redirects,
        )


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment: safe to log and to show in an error."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def backoff_delay(attempt: int, base: float) -> float:
    """Exponential backoff with jitter: half fixed, half random, doubling per attempt."""
    ceiling = base * 2.0**attempt
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class GuardedSessions:
    """aiohttp sessions whose every connection goes through the address guard, and, when the
    policy trusts some hosts by name (or lifts the guard), one without it for those hosts."""

    def __init__(
        self,
        policy: AddressPolicy,
        pool_size: int,
        timeout: aiohttp.ClientTimeout,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._policy = policy

        def session(guarded: bool) -> aiohttp.ClientSession:
            connector = aiohttp.TCPConnector(
                limit=pool_size,
                ttl_dns_cache=60,
                socket_factory=policy.socket_factory if guarded and policy.guards else None,
            )
            return aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                headers=headers,
                auto_decompress=True,
                trust_env=False,
            )

        self._guarded = session(guarded=True)
        self._trusted = (
            session(guarded=False) if policy.trusted_hosts or not policy.guards else None
        )

    def for_url(self, url: str) -> aiohttp.ClientSession:
        host = urlsplit(url).hostname or ""
        if self._trusted is not None and self._policy.trusts_host(host):
            return self._trusted
        return self._guarded

    async def close(self) -> None:
        await self._guarded.close()
        if self._trusted is not None:
            await self._trusted.close()


class Downloader:
    """One per worker process; holds the connection pools. Create and use it inside one loop."""

    def __init__(self, limits: FetchLimits, policy: AddressPolicy, pool_size: int = 256) -> None:
        self._limits = limits
        timeout = aiohttp.ClientTimeout(
            total=limits.total_timeout,
            sock_connect=limits.connect_timeout,
            sock_read=limits.read_timeout,
        )
        self._sessions = GuardedSessions(policy, pool_size, timeout)

    async def close(self) -> None:
        await self._sessions.close()

    async def fetch(self, url: str, memory: ImageMemory | None = None) -> bytes:
        """The image's bytes, within `total_timeout` seconds for all attempts together. With
        `memory`, a body's bytes are held there before it is read (see `_read_capped`); the
        caller gives them back once it is done with the body."""
        try:
            async with asyncio.timeout(self._limits.total_timeout) as deadline:
                room = None if memory is None else _BodyRoom(memory, deadline)
                return await self._fetch_with_retries(url, room)
        except TimeoutError:
            raise ImageDownloadError(
                f"not downloaded within {self._limits.total_timeout:g} s"
            ) from None

    async def _fetch_with_retries(self, url: str, memory: _BodyRoom | None) -> bytes:
        attempt = 0
        while True:
            try:
                return await self._fetch_following_redirects(url, memory)
            except _RetryableError as exc:
                if attempt >= self._limits.retries:
                    raise ImageDownloadError(str(exc)) from None
            await asyncio.sleep(backoff_delay(attempt, self._limits.backoff))
            attempt += 1

    async def _fetch_following_redirects(self, url: str, memory: _BodyRoom | None) -> bytes:
        current = url
        for _hop in range(self._limits.max_redirects + 1):
            body, location = await self._fetch_one_hop(current, memory)
            if location is None:
                return body
            if not is_utf8_text(location):
                # aiohttp hands over header bytes that are not UTF-8 as lone surrogates.
                raise ImageDownloadError("redirected to a Location that is not valid UTF-8")
            try:
                current = urljoin(current, location)
                scheme = urlsplit(current).scheme
            except ValueError:  # "Invalid IPv6 URL" and the like
                raise ImageDownloadError("redirected to a Location that is not a URL") from None
            if scheme not in ("http", "https"):
                shown = safe_text(redact_url(current), QUOTED_LOCATION_CHARS)
                raise ImageDownloadError(f"redirected to a non-http URL: {shown}")
        raise ImageDownloadError(f"more than {self._limits.max_redirects} redirects")

    async def _fetch_one_hop(self, url: str, memory: _BodyRoom | None) -> tuple[bytes, str | None]:
        host = urlsplit(url).hostname or ""
        try:
            async with self._sessions.for_url(url).get(url, allow_redirects=False) as response:
                status = response.status
                if status in REDIRECT_CODES:
                    location = response.headers.get("Location")
                    if not location:
                        raise ImageDownloadError(f"HTTP {status} without a Location")
                    return b"", location
                if status == 429 or status >= 500:
                    raise _RetryableError(f"HTTP {status}")
                if not 200 <= status < 300:
                    raise ImageDownloadError(f"HTTP {status}")
                return await self._read_capped(response, memory), None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, BlockedAddressError):
                raise ImageDownloadError(
                    f"refused: {safe_text(host, QUOTED_LOCATION_CHARS)} resolves to an address"
                    f" that is not public ({ALLOW_PRIVATE_HINT})"
                ) from None
            raise _RetryableError(f"connection failed: {exc.os_error.strerror or exc}") from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            raise _RetryableError(f"connection broken: {type(exc).__name__}") from None
        except TimeoutError:
            raise _RetryableError("timed out") from None
        except aiohttp.InvalidURL:
            raise ImageDownloadError("invalid URL") from None
        except aiohttp.ClientError as exc:
            raise _RetryableError(f"connection error: {type(exc).__name__}") from None

    async def _read_capped(
        self, response: aiohttp.ClientResponse, memory: _BodyRoom | None
    ) -> bytes:
        cap = self._limits.max_bytes
        if response.content_length is not None and response.content_length > cap:
            raise ImageDownloadError(f"larger than {cap} bytes")
        # What the body may come to, held before a byte of it is read. A body of unknown size
        # (no Content-Length, or compressed: aiohttp inflates it) holds the cap up front and
        # gives back the rest once read; held chunk by chunk instead, bodies half read could
        # fill the budget, each waiting for more that only another's end could free.
        expected = response.content_length if _plain_length(response) else None
        reserved = cap if expected is None else expected
        if memory is not None:
            await memory.hold_body(reserved)
        try:
            body = bytearray()
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                body += chunk
                if len(body) > cap:
                    raise ImageDownloadError(f"larger than {cap} bytes")
                if len(body) > reserved:  # aiohttp reads no more than Content-Length says
                    raise ImageDownloadError(f"longer than its Content-Length ({reserved})")
        except BaseException:
            if memory is not None:
                memory.drop_body()  # a retry holds again
            raise
        if memory is not None:
            memory.keep_body(len(body))
        return bytes(body)


class _BodyRoom:
    """The node's bytes for one download's bodies. The wait for room is not the origin's
    time: the download's deadline moves by as long as it waited, or a node short of memory
    would fail its images as "not downloaded within" the timeout."""

    def __init__(self, memory: ImageMemory, deadline: asyncio.Timeout) -> None:
        self._memory = memory
        self._deadline = deadline

    async def hold_body(self, amount: int) -> None:
        if self._memory.try_hold_body(amount):
            return  # no wait: the deadline stays as it is (moving it costs two timer changes)
        loop = asyncio.get_running_loop()
        started, when = loop.time(), self._deadline.when()
        self._deadline.reschedule(None)  # stopped while it waits
        try:
            await self._memory.hold_body(amount)
        finally:
            if when is not None:
                self._deadline.reschedule(when + loop.time() - started)

    def keep_body(self, size: int) -> None:
        self._memory.keep_body(size)

    def drop_body(self) -> None:
        self._memory.drop_body()


def _plain_length(response: aiohttp.ClientResponse) -> bool:
    """Whether the response's Content-Length is the length of the body read (not compressed)."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    return response.content_length is not None and encoding in ("", "identity")
