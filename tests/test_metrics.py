"""The recorders of `actors.metrics` over stand-ins for Ray's metric objects."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.metrics import TimedFetcher
from core.images.fetch import ImageDownloadError

pytestmark = pytest.mark.timeout(30)


class Kept:
    """A Counter or Histogram that keeps what it is told."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def inc(self, value: float = 1.0, tags: Any = None) -> None:
        self.values.append(value)

    def observe(self, value: float, tags: Any = None) -> None:
        self.values.append(value)


class Origin:
    async def fetch(self, url: str, memory: object = None) -> bytes:
        if "missing" in url:
            raise ImageDownloadError("HTTP 404")
        return b"x" * 1234


def test_downloaded_bytes_count_whole_bodies_and_every_download_is_timed() -> None:
    seconds, downloaded = Kept(), Kept()
    fetcher = TimedFetcher(Origin(), seconds, downloaded)  # type: ignore[arg-type]

    async def main() -> None:
        assert len(await fetcher.fetch("http://a.test/1")) == 1234
        with pytest.raises(ImageDownloadError):
            await fetcher.fetch("http://a.test/missing")
        await fetcher.fetch("http://a.test/2")

    asyncio.run(main())
    assert downloaded.values == [1234, 1234]
    assert len(seconds.values) == 3
