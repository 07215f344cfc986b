"""How much the database grows for a submission, at its worst: the promise is at most 20x the
body. Built without Ray from the real pieces: the body parsed as the API parses it, each
image's failure as a real download makes it, stored as the tracker stores it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from core.images.fetch import Downloader, FetchLimits
from core.images.processing import process_image
from core.images.urlguard import AddressPolicy
from core.jobstore.sqlite.store import SqliteStore
from core.models import ImageOutcome, ImageTask
from core.settings import Settings
from core.submission import SubmissionLimits, parse_submission
from harness.imageserver import ImageServer

NODE_ID = "1d84a03c9d82b143b22303da377061772d38ec25dd640db2c23cd276"  # as Ray names a node
IMAGES = 5000
# The shortest URL an attacker with a short domain can send, repeated: about 14 bytes a image.
SHORT_URL = "http://a.io/"


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    running = ImageServer().start()
    yield running
    running.stop()


def failure_from(url: str) -> ImageOutcome:
    async def run() -> ImageOutcome:
        downloader = Downloader(
            FetchLimits.from_settings(Settings(download_retries=0, retry_backoff=0.01)),
            AddressPolicy(allow_private=True),
        )
        try:
            return await process_image(
                ImageTask(1, 0, url), downloader, max_pixels=10**7, gpu_delay=(0, 0),
                node_id=NODE_ID,
            )  # fmt: skip
        finally:
            await downloader.close()

    return asyncio.run(run())


def database_bytes(path: Path) -> int:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


@pytest.mark.parametrize("origin", ["garbled/scheme", "garbled/redirect", "status/404"])
def test_the_worst_failing_body_grows_the_database_at_most_20x(
    server: ImageServer, tmp_path: Path, origin: str
) -> None:
    # The failure as the origin makes it, then quoting the short URL as it would for it.
    failed = failure_from(server.url(origin))
    assert failed.error is not None
    failed = replace(failed, error=failed.error.replace(server.url(origin), SHORT_URL))
    body = json.dumps(
        {"count": 1, "visits": [{"store_id": "S", "image_url": [SHORT_URL] * IMAGES,
                                 "visit_time": "2025-03-11"}]}
    ).encode()  # fmt: skip
    path = tmp_path / "jobs.sqlite3"
    store = SqliteStore(path)
    before = database_bytes(path)
    job_id, _ = store.create_job(
        parse_submission(body, SubmissionLimits.from_settings(Settings())), None, {}
    )
    outcomes = [replace(failed, job_id=job_id, index=index) for index in range(IMAGES)]
    for start in range(0, IMAGES, 128):  # in batches, as the tracker flushes
        assert store.save_outcomes(outcomes[start : start + 128], []) == []
    store.save_outcomes([], [job_id])
    store.close()
    grown = database_bytes(path) - before
    print(f"{origin}: {len(failed.error)}-character errors, body {len(body)} bytes,"
          f" database grew {grown} bytes, {grown / len(body):.1f}x")  # fmt: skip
    assert grown <= 20 * len(body)
