"""`python -m bench.stores`: the job store's calls timed on SQLite and on PostgreSQL.

PostgreSQL runs as a server of its own on loopback with its durable defaults (fsync on), as
it would in production, not the tests' fsync-off server. Prints a table (the median of a few
runs, milliseconds) and writes bench/out/stores.json.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from core.jobstore import JobStore, open_store
from core.models import ImageOutcome, JobSubmission, Visit
from core.settings import Settings
from harness.postgres import PostgresServer
from harness.service import ROOT

OUT = ROOT / "bench" / "out"
IMAGES = 10_000
RUNS = 5
VIEWS = 500


def job() -> JobSubmission:
    """10,000 images in 100 visits, URLs of a realistic length."""
    return JobSubmission(
        tuple(
            Visit(f"S{visit:08d}", "2025-03-11T10:00:00Z", tuple(
                f"https://cdn.example.com/stores/{visit}/images/{i:04d}.jpg" for i in range(100)
            ))
            for visit in range(IMAGES // 100)
        )
    )  # fmt: skip


def outcomes(job_id: int) -> list[ImageOutcome]:
    """Every image settled, one in ten failed, from eight nodes."""
    return [
        ImageOutcome(job_id, i, time.time(), error=f"image download failed: HTTP 404 ({i})")
        if i % 10 == 0
        else ImageOutcome(job_id, i, time.time(), 640, 480, node_id=f"node-{i % 8:052d}")
        for i in range(IMAGES)
    ]


def since(began: float) -> float:
    return (time.perf_counter() - began) * 1000


def measure(store: JobStore) -> dict[str, float]:
    submission = job()
    created, saved, again, page = [], [], [], []
    for _ in range(RUNS):
        began = time.perf_counter()
        job_id, _ = store.create_job(submission, None, {})
        created.append(since(began))
        batch = outcomes(job_id)
        began = time.perf_counter()
        store.save_outcomes(batch, [job_id])
        saved.append(since(began))
        began = time.perf_counter()
        store.save_outcomes(batch, [])  # every one a duplicate now
        again.append(since(began))
        began = time.perf_counter()
        store.results_page(job_id, 5000, 1000)
        page.append(since(began))
    views = []
    for _ in range(VIEWS):
        began = time.perf_counter()
        store.job_view(job_id)
        views.append(since(began))
    return {
        "create_job, 10k images": statistics.median(created),
        "save_outcomes, 10k new": statistics.median(saved),
        "save_outcomes, 10k already stored": statistics.median(again),
        "results_page of 1000": statistics.median(page),
        "job_view": statistics.median(views),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        sqlite = open_store(Settings(data_dir=Path(scratch), database_url=""))
        results = {"sqlite": measure(sqlite)}
        sqlite.close()
    server = PostgresServer(durable=True).start()
    try:
        postgres = open_store(Settings(database_url=server.empty_database("bench")))
        results["postgres"] = measure(postgres)
        postgres.close()
    finally:
        server.remove()
    print(f"| call (median of {RUNS}, ms) | SQLite | PostgreSQL |")
    print("| --- | --- | --- |")
    for name, value in results["sqlite"].items():
        print(f"| {name} | {value:,.2f} | {results['postgres'][name]:,.2f} |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "stores.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
