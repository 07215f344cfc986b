"""The photo workload of `make bench`, also run alone: `python -m bench.photos [COUNT]` prints
its rows and writes bench/out/photos.json.

A job of COUNT (2,000) phone photos (bench/photogen.py: 2 and 12 MP JPEGs, some progressive,
3 MP WebP, PNG screenshots, HEIC and AVIF; about 1.2 MB a photo) through the service in its
default configuration with no simulated GPU delay, so that it measures the pipeline: download,
header, pixel bound, full check. Beside it, in the same run, a bare `multiprocessing.Pool` of
one process per CPU running the same check (`core.images.measure.measure_image`) on the same
bytes, downloading nothing: what the service's machinery costs on top of Pillow's work.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from bench.jobs import PeakMemory, child, service_pids, submit, wait_done, wait_http
from bench.photogen import Photo, photo_pool
from core.images.measure import measure_image
from core.settings import Settings
from harness.client import Client
from harness.procs import cpu_by_role
from harness.service import ROOT, ServiceProcess, free_port

OUT = ROOT / "bench" / "out"
SEED = 18
PHOTO_COUNT = 2_000
# The default configuration, as `make run` starts it, but for the simulated GPU step.
ENVIRONMENT = {
    "IMAGE_SERVICE_FAST_INGRESS": os.environ.get("FAST_INGRESS", "0"),
    "IMAGE_SERVICE_GPU_DELAY": "0",
}
MAX_PIXELS = Settings().max_image_pixels
DRAFT_REPEATS = 5

# The pool's bytes, set before the bare loop's processes are forked, which inherit them.
_bare_photos: list[bytes] = []


def job_order(files: int, count: int) -> list[int]:
    """`count` indexes into a pool of `files`: each file as often as the next, shuffled
    (seeded)."""
    order = [n % files for n in range(count)]
    random.Random(SEED).shuffle(order)
    return order


def photo_job(port: int, pool: list[Photo], order: list[int]) -> dict[str, Any]:
    visits = []
    for v in range(0, len(order), 10):
        urls = [f"http://127.0.0.1:{port}/img/{pool[n].name}" for n in order[v : v + 10]]
        visits.append(
            {
                "store_id": f"RP{v // 10 % 1000 + 1:05d}",
                "image_url": urls,
                "visit_time": "2025-03-11",
            }
        )
    return {"count": len(visits), "visits": visits}


def _bare_check(index: int) -> tuple[int, int]:
    return measure_image(_bare_photos[index], MAX_PIXELS)


def bare_loop(pool: list[Photo], order: list[int]) -> dict[str, Any]:
    """The same checks on the same bytes in `Pool(os.cpu_count())`: no download, no Ray."""
    global _bare_photos
    _bare_photos = [photo.path.read_bytes() for photo in pool]
    # Forked, so the workers share the bytes read above; their CPU time is counted once they
    # are reaped (`join`), as this process's children's.
    context = multiprocessing.get_context("fork")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with context.Pool(os.cpu_count()) as workers:
        started = time.perf_counter()
        sizes = workers.map(_bare_check, order, chunksize=4)
        elapsed = time.perf_counter() - started
        workers.close()
        workers.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    _bare_photos = []
    wrong = sum(
        size != (pool[n].width, pool[n].height) for n, size in zip(order, sizes, strict=True)
    )
    assert wrong == 0, f"{wrong} photos measured wrong by the bare loop"
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {
        "processes": os.cpu_count(),
        "throughput_ips": len(order) / elapsed,
        "cpu_ms_per_photo": cpu * 1000 / len(order),
    }


def through_service(work: Path, pool: list[Photo], order: list[int]) -> dict[str, Any]:
    """The photo job through the service: its rate, CPU by role and peak memory."""
    port = free_port()
    with child("bench.imagehost", str(port), str(pool[0].path.parent)):
        wait_http(f"http://127.0.0.1:{port}/img/{pool[0].name}")
        service = ServiceProcess(work / "photos", env_overrides=ENVIRONMENT).start()
        try:
            time.sleep(2)
            before = cpu_by_role(service_pids(service))
            memory = PeakMemory(service)
            job_id, _ = submit(service, photo_job(port, pool, order))
            started = time.perf_counter()
            finished = wait_done(service, job_id)
            peak = memory.stop()
            after = cpu_by_role(service_pids(service))
            rows = Client(service.url).all_results(job_id)
        finally:
            service.stop()
    expected = {f"http://127.0.0.1:{port}/img/{p.name}": (p.width, p.height) for p in pool}
    wrong = sum((row["width"], row["height"]) != expected[row["image_url"]] for row in rows)
    assert len(rows) == len(order) and wrong == 0, f"{wrong} of {len(rows)} photos measured wrong"
    ms_per_photo = {
        role: (seconds - before.get(role, 0.0)) * 1000 / len(order)
        for role, seconds in after.items()
    }
    return {
        "throughput_ips": len(order) / (finished - started),
        "cpu_ms_per_photo": sum(ms_per_photo.values()),
        "cpu_ms_per_photo_by_role": ms_per_photo,
        "peak_rss_bytes": peak,
        "peak_rss_bytes_by_role": memory.peak_by_role,
    }


def cpu_ms(check: Callable[[], object]) -> float:
    """Median CPU time of `check` in this process, ms."""
    times = []
    for _ in range(DRAFT_REPEATS):
        started = time.process_time()
        check()
        times.append(time.process_time() - started)
    return statistics.median(times) * 1000


def draft_decode(pool: list[Photo]) -> dict[str, Any]:
    """One 12 MP photo saved as a baseline and as a progressive JPEG of the same quality:
    the CPU time of the service's check (the draft decode, at 1/8 scale) and of a full decode
    of each."""
    source = next(p for p in pool if p.fmt == "JPEG" and p.width * p.height > 10_000_000)
    with Image.open(source.path) as image:
        pixels = image.convert("RGB")
    result: dict[str, Any] = {"photo": source.name}
    for variant, progressive in (("baseline", False), ("progressive", True)):
        buffer = io.BytesIO()
        pixels.save(buffer, format="JPEG", quality=93, progressive=progressive)
        data = buffer.getvalue()

        def checked(data: bytes = data) -> None:
            measure_image(data, MAX_PIXELS)  # as the service checks a JPEG: a draft decode

        def full_decode(data: bytes = data) -> None:
            with Image.open(io.BytesIO(data)) as image:
                image.load()

        result[variant] = {
            "bytes": len(data),
            "draft_ms": cpu_ms(checked),
            "full_ms": cpu_ms(full_decode),
        }
    return result


def measure(work: Path, count: int = PHOTO_COUNT) -> dict[str, Any]:
    """Every figure of the photo rows, from one run."""
    pool = photo_pool(OUT / "photos", SEED)
    order = job_order(len(pool), count)
    sizes = [photo.path.stat().st_size for photo in pool]
    mix: dict[str, int] = {}
    for n in order:
        mix[pool[n].fmt] = mix.get(pool[n].fmt, 0) + 1
    return {
        "photos": count,
        "mean_bytes": statistics.mean(sizes[n] for n in order),
        "mix": mix,
        "draft": draft_decode(pool),
        "bare": bare_loop(pool, order),
        "service": through_service(work, pool, order),
    }


def rows(photos: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    service, bare, draft = photos["service"], photos["bare"], photos["draft"]
    roles = service["cpu_ms_per_photo_by_role"]
    workers_ms = roles.get("image workers", 0.0)
    mean_mb = photos["mean_bytes"] / 1e6
    return [
        (f"photos: {photos['photos']:,} phone photos, delay 0 (mean {mean_mb:.2f} MB)",
         f"{service['throughput_ips']:.1f} img/s",
         f"bare Pool({bare['processes']}) {bare['throughput_ips']:.1f} img/s",
         f"{service['throughput_ips'] / bare['throughput_ips']:.2f} of the bare loop"),
        ("photos: CPU per photo, all processes of the service",
         f"{service['cpu_ms_per_photo']:.1f} ms", f"bare loop {bare['cpu_ms_per_photo']:.1f} ms",
         f"{service['cpu_ms_per_photo'] / bare['cpu_ms_per_photo']:.2f}x the bare loop"),
        ("  photos: of which the image workers", f"{workers_ms:.1f} ms", "", ""),
        ("photos: peak RSS of the service during the job",
         f"{service['peak_rss_bytes'] / 2**30:.2f} GiB", "target 2 GB",
         f"{service['peak_rss_bytes'] / 2e9:.2f}x target"),
        *[(f"  photos: peak RSS, {role}", f"{size / 2**30:.2f} GiB", "", "")
          for role, size in sorted(service["peak_rss_bytes_by_role"].items(),
                                   key=lambda item: -item[1])],
        *[(f"12 MP {variant} JPEG check: draft / full decode",
           f"{draft[variant]['draft_ms']:.0f} / {draft[variant]['full_ms']:.0f} ms CPU",
           f"{draft[variant]['bytes'] / 1e6:.1f} MB",
           f"the draft saves {1 - draft[variant]['draft_ms'] / draft[variant]['full_ms']:.0%}")
          for variant in ("baseline", "progressive")],
    ]  # fmt: skip


def print_rows(table: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else PHOTO_COUNT
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        photos = measure(Path(tmp), count)
    print_rows(rows(photos))
    print(f"mix: {photos['mix']}")
    (OUT / "photos.json").write_text(json.dumps(photos, indent=2))
    print(f"\nJSON: {OUT / 'photos.json'}")


if __name__ == "__main__":
    main()
