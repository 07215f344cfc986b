"""`make bench`: the service loaded the way users load it, measured in one run.

Prints a table and writes bench/out/results.json. Every figure sits beside its ideal or its
plain baseline from the same run, since this machine is shared and noisy.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench import photos
from bench.jobs import PeakMemory, child, service_pids, submit, wait_done, wait_http
from harness.postgres import PostgresServer
from harness.procs import cpu_by_role
from harness.service import ROOT, ServiceProcess, WorkerNode, free_port

OUT = ROOT / "bench" / "out"
IMAGE_COUNT = 300
IN_FLIGHT = 256
MEAN_DELAY = 0.25
SLOW_ORIGIN_MS = 150  # a CDN's usual time to first byte
SMALL_JOBS = 20
# A 10-image job can end no sooner than its slowest simulated GPU step: the expected largest of
# 10 delays uniform on 0.1-0.4 s is 0.1 + 0.3 * 10 / 11.
SMALL_JOB_FLOOR = 0.1 + 0.3 * 10 / 11
# The default configuration, as `make run` starts it: Serve's own proxy, status answered at
# the edge (service/edge.py). `FAST_INGRESS=1 make bench` measures the HAProxy ingress.
FAST = {"IMAGE_SERVICE_FAST_INGRESS": os.environ.get("FAST_INGRESS", "0")}


def make_job(image_port: int, images: int, first_visit: int = 0) -> dict[str, Any]:
    visits = []
    for v in range(images // 10):
        urls = [
            f"http://127.0.0.1:{image_port}/img/{n % IMAGE_COUNT}.{['jpeg', 'png', 'webp'][n % 3]}"
            for n in range(v * 10, v * 10 + 10)
        ]
        store = f"RP{(first_visit + v) % 1000 + 1:05d}"
        visits.append({"store_id": store, "image_url": urls, "visit_time": "2025-03-11"})
    return {"count": len(visits), "visits": visits}


def load(url: str, seconds: float) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, "-m", "bench.load", url, "16", str(seconds)],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=seconds + 60,
    )
    return dict(json.loads(output.stdout.decode().strip().splitlines()[-1]))


def start_service(data_dir: Path, gpu_delay: str, database_url: str = "") -> ServiceProcess:
    """The service as users run it, with 256 images in flight on its one node; its jobs in
    SQLite, or in PostgreSQL at `database_url`."""
    store = {"IMAGE_SERVICE_DATABASE_URL": database_url} if database_url else {}
    return ServiceProcess(
        data_dir,
        env_overrides={
            **FAST,
            **store,
            "IMAGE_SERVICE_GPU_DELAY": gpu_delay,
            "IMAGE_SERVICE_CONCURRENCY": str(IN_FLIGHT),
        },
    ).start()


def on_postgres(work: Path, image_port: int) -> dict[str, Any]:
    """The 10k-image job, submits and status polling again with the jobs in PostgreSQL: a
    server of its own on loopback, durable as in production (fsync on)."""
    # Its own directory under /tmp: the server runs as another user, who cannot enter `work`.
    server = PostgresServer(durable=True).start()
    try:
        service = start_service(
            work / "pg-delay", gpu_delay="0.1-0.4", database_url=server.empty_database("bench")
        )
        try:
            job_id, _ = submit(service, make_job(image_port, 10_000))
            started = time.perf_counter()
            finished = wait_done(service, job_id)
            polled, _ = submit(service, make_job(image_port, 10_000, first_visit=1))
            time.sleep(1.5)
            status = load(f"{service.url}/api/status?jobid={polled}", 3)
            wait_done(service, polled)
            latencies = []
            for n in range(5):
                later, latency = submit(service, make_job(image_port, 10_000, first_visit=2 + n))
                latencies.append(latency)
                wait_done(service, later)
        finally:
            service.stop()
    finally:
        server.remove()
    return {
        "throughput_ips": 10_000 / (finished - started),
        "status": status,
        "submit_p50_ms": statistics.median(latencies) * 1000,
    }


def with_delay(work: Path, ports: tuple[int, int, int]) -> dict[str, Any]:
    image_port, slow_port, floor_port = ports
    service = start_service(work / "delay", gpu_delay="0.1-0.4")
    try:
        memory = PeakMemory(service)
        job_id, _ = submit(service, make_job(image_port, 10_000))
        started = time.perf_counter()
        finished = wait_done(service, job_id)

        # The same job again, with 16 connections polling its status meanwhile.
        polled, _ = submit(service, make_job(image_port, 10_000, first_visit=1))
        polled_started = time.perf_counter()
        time.sleep(1.5)
        status = load(f"{service.url}/api/status?jobid={polled}", 3)
        floor = load(f"http://127.0.0.1:{floor_port}/api/status?jobid=1", 3)
        polled_finished = wait_done(service, polled)
        peak = memory.stop()

        slow_job, _ = submit(service, make_job(slow_port, 10_000))
        slow_started = time.perf_counter()
        slow_finished = wait_done(service, slow_job)

        first, _ = submit(service, make_job(image_port, 5_000))
        second, _ = submit(service, make_job(image_port, 5_000, first_visit=500))
        pair_started = time.perf_counter()
        ends: dict[int, float] = {}
        while len(ends) < 2:
            for job in (first, second):
                body = requests.get(f"{service.url}/api/status", params={"jobid": job}, timeout=60)
                if job not in ends and body.json()["status"] != "ongoing":
                    ends[job] = time.perf_counter() - pair_started
            time.sleep(0.05)
        small = small_jobs(service, image_port, SMALL_JOBS)
    finally:
        service.stop()
    return {
        "small_job_seconds": small,
        "throughput_ips": 10_000 / (finished - started),
        "polled_ips": 10_000 / (polled_finished - polled_started),
        "slow_origin_ips": 10_000 / (slow_finished - slow_started),
        "status": status,
        "floor": floor,
        "peak_rss_bytes": peak,
        "fair_pair_seconds": [ends[first], ends[second]],
    }


def small_jobs(service: ServiceProcess, image_port: int, count: int) -> list[float]:
    """Submit to `completed` of one-visit jobs of 10 images, one at a time, polled every 10 ms:
    what a client waits for a small job."""
    seconds = []
    for n in range(count):
        started = time.perf_counter()
        job_id, _ = submit(service, make_job(image_port, 10, first_visit=n))
        seconds.append(wait_done(service, job_id, poll=0.01) - started)
    return seconds


def without_delay(work: Path, image_port: int, origin_pid: int) -> dict[str, Any]:
    service = start_service(work / "nodelay", gpu_delay="0")
    try:
        time.sleep(2)
        pids = service_pids(service) | {origin_pid}
        before = cpu_by_role(pids)
        job_id, _ = submit(service, make_job(image_port, 10_000))
        started = time.perf_counter()
        finished = wait_done(service, job_id, poll=0.02)
        after = cpu_by_role(service_pids(service) | {origin_pid})
        latencies = []
        for n in range(5):
            later, latency = submit(service, make_job(image_port, 10_000, first_visit=n))
            latencies.append(latency)
            wait_done(service, later)
        # The largest job the default settings take; cancelled at once, its submit is the row.
        big_latencies = []
        for n in range(3):
            big, latency = submit(service, make_job(image_port, 100_000, first_visit=n))
            big_latencies.append(latency)
            cancel = requests.post(f"{service.url}/api/jobs/{big}/cancel", timeout=120)
            assert cancel.status_code in (200, 202), cancel.text  # 202: still cancelling
        wait_done(service, big, expected="failed")  # a cancelled job ends as failed
        pages = {offset: results_page_ms(service, big, offset) for offset in (0, 99_000)}
    finally:
        service.stop()
    ms_per_image = {
        role: (seconds - before.get(role, 0.0)) * 1000 / 10_000 for role, seconds in after.items()
    }
    return {
        "throughput_ips": 10_000 / (finished - started),
        # The service's own: every process but the origin.
        "cpu_ms_per_image": sum(ms for role, ms in ms_per_image.items() if role != "origin"),
        "cpu_ms_per_image_by_role": ms_per_image,
        "submit_p50_ms": statistics.median(latencies) * 1000,
        "submit_ms": [round(x * 1000, 1) for x in latencies],
        "submit_100k_p50_ms": statistics.median(big_latencies) * 1000,
        "submit_100k_ms": [round(x * 1000, 1) for x in big_latencies],
        "results_page_p50_ms": {str(offset): ms for offset, ms in pages.items()},
    }


def results_page_ms(service: ServiceProcess, job_id: int, offset: int, count: int = 20) -> float:
    """p50 of GET /api/results for one page of the default size at `offset`."""
    url = f"{service.url}/api/results"
    seconds = []
    with requests.Session() as session:
        for _ in range(count):
            started = time.perf_counter()
            response = session.get(url, params={"jobid": job_id, "offset": offset}, timeout=60)
            seconds.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return statistics.median(seconds) * 1000


def scale_out(work: Path, image_port: int) -> dict[str, Any]:
    """The same job on one node, then on two, with the GPU capacity (32 per node) the bound."""
    service = ServiceProcess(
        work / "scale",
        env_overrides={"IMAGE_SERVICE_GPU_DELAY": "0.1-0.4", "IMAGE_SERVICE_CONCURRENCY": "32"},
    ).start()
    node = WorkerNode(service, image_slots=32)
    try:
        seconds = []
        for nodes in (1, 2):
            if nodes == 2:
                node.start()
                while len(service.probe("workers")) < 2:
                    time.sleep(0.5)
            job_id, _ = submit(service, make_job(image_port, 2_000))
            started = time.perf_counter()
            seconds.append(wait_done(service, job_id) - started)
    finally:
        node.stop()
        service.stop()
    return {"one_node_seconds": seconds[0], "two_node_seconds": seconds[1]}


def table(
    delay: dict[str, Any], nodelay: dict[str, Any], scale: dict[str, Any], pg: dict[str, Any]
) -> list[tuple[str, str, str, str]]:
    ideal = IN_FLIGHT / MEAN_DELAY
    fair = delay["fair_pair_seconds"]
    small = statistics.median(delay["small_job_seconds"])
    status, floor = delay["status"], delay["floor"]
    roles = nodelay["cpu_ms_per_image_by_role"]
    tracker_ms = roles.get("tracker", 0.0)
    pages = nodelay["results_page_p50_ms"]
    return [
        ("1 job of 10k, delay 0.1-0.4, 256 GPU slots", f"{delay['throughput_ips']:.0f} img/s",
         f"ideal {ideal:.0f}", f"{delay['throughput_ips'] / ideal:.2f} of ideal (target 0.93)"),
        ("same, while status is polled (below)", f"{delay['polled_ips']:.0f} img/s",
         f"ideal {ideal:.0f}", f"{delay['polled_ips'] / ideal:.2f} of ideal"),
        (f"same, origin answering after {SLOW_ORIGIN_MS} ms",
         f"{delay['slow_origin_ips']:.0f} img/s",
         f"ideal {ideal:.0f}", f"{delay['slow_origin_ips'] / ideal:.2f} of ideal (target 0.90)"),
        ("same job, delay 0", f"{nodelay['throughput_ips']:.0f} img/s", "target 2000",
         f"{nodelay['throughput_ips'] / 2000:.2f} of target"),
        ("CPU per image, delay 0, all processes", f"{nodelay['cpu_ms_per_image']:.2f} ms",
         "target 0.8", f"{nodelay['cpu_ms_per_image'] / 0.8:.2f}x target"),
        *[(f"  {role}", f"{ms:.3f} ms", "target 0.6" if role == "image workers" else "",
           f"{ms / 0.6:.2f}x target" if role == "image workers" else "")
          for role, ms in sorted(roles.items(), key=lambda item: -item[1])],
        ("tracker's ceiling, 1000 / its ms per image", f"{1000 / max(tracker_ms, 1e-6):.0f} img/s",
         "", ""),
        ("submit 10k images, p50 of 5", f"{nodelay['submit_p50_ms']:.0f} ms", "target 100",
         f"{nodelay['submit_p50_ms'] / 100:.2f}x target"),
        ("submit 100k images, p50 of 3", f"{nodelay['submit_100k_p50_ms']:.0f} ms",
         "target 1000", f"{nodelay['submit_100k_p50_ms'] / 1000:.2f}x target"),
        ("results page at offset 99,000 of a 100k job, p50",
         f"{pages['99000']:.1f} ms", f"offset 0: {pages['0']:.1f} ms",
         f"{pages['99000'] / pages['0']:.2f}x offset 0"),
        ("GET /api/status, 16 conns, during a job", f"{status['rps']:.0f} req/s",
         f"floor {floor['rps']:.0f}", f"{status['rps'] / floor['rps']:.2f} of floor (target 2000)"),
        ("  status p50 / p99", f"{status['p50_ms']:.1f} / {status['p99_ms']:.1f} ms",
         f"floor {floor['p50_ms']:.1f} / {floor['p99_ms']:.1f}", "target p99 50 ms"),
        ("  status 5xx during load", str(status["errors_5xx"]), "0", ""),
        ("peak RSS of the service, job 1", f"{delay['peak_rss_bytes'] / 2**30:.2f} GiB",
         "target 2.5", f"{delay['peak_rss_bytes'] / 2**30 / 2.5:.2f}x target"),
        (f"one-visit job of 10 images, submit to completed, p50 of {SMALL_JOBS}", f"{small:.2f} s",
         f"floor {SMALL_JOB_FLOOR:.2f}", f"{small / SMALL_JOB_FLOOR:.2f}x floor (target 1.15)"),
        ("two 5k jobs at once: finish times", f"{fair[0]:.1f} s / {fair[1]:.1f} s", "within 10%",
         f"{abs(fair[0] - fair[1]) / max(fair):.1%} apart"),
        ("2k images, 32 slots/node: 1 node vs 2",
         f"{scale['one_node_seconds']:.1f} s / {scale['two_node_seconds']:.1f} s", "target 0.55",
         f"{scale['two_node_seconds'] / scale['one_node_seconds']:.2f} of one node's time"),
        ("PostgreSQL: 1 job of 10k, delay 0.1-0.4", f"{pg['throughput_ips']:.0f} img/s",
         f"SQLite {delay['throughput_ips']:.0f}",
         f"{pg['throughput_ips'] / ideal:.2f} of ideal; "
         f"{pg['throughput_ips'] / delay['throughput_ips']:.2f} of SQLite (target 0.9)"),
        ("PostgreSQL: submit 10k images, p50 of 5", f"{pg['submit_p50_ms']:.0f} ms",
         f"SQLite {nodelay['submit_p50_ms']:.0f}",
         f"{pg['submit_p50_ms'] / nodelay['submit_p50_ms']:.2f}x SQLite"),
        ("PostgreSQL: GET /api/status, 16 conns", f"{pg['status']['rps']:.0f} req/s",
         f"SQLite {status['rps']:.0f}",
         f"{pg['status']['rps'] / status['rps']:.2f} of SQLite (read at the edge, in a thread)"),
    ]  # fmt: skip


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    image_port, slow_port, floor_port = free_port(), free_port(), free_port()
    with (
        tempfile.TemporaryDirectory() as tmp,
        child("bench.imagehost", str(image_port), str(IMAGE_COUNT)) as origin,
        child("bench.imagehost", str(slow_port), str(IMAGE_COUNT), str(SLOW_ORIGIN_MS)),
        child("bench.floor", str(floor_port)),
    ):
        wait_http(f"http://127.0.0.1:{image_port}/img/0.jpeg")
        wait_http(f"http://127.0.0.1:{slow_port}/img/0.jpeg")
        wait_http(f"http://127.0.0.1:{floor_port}/api/status?jobid=1")
        delay = with_delay(Path(tmp), (image_port, slow_port, floor_port))
        nodelay = without_delay(Path(tmp), image_port, origin.pid)
        scale = scale_out(Path(tmp), image_port)
        pg = on_postgres(Path(tmp), image_port)
    # The photo job last, with an origin of its own and the others' stopped.
    with tempfile.TemporaryDirectory() as tmp:
        photo = photos.measure(Path(tmp))
    photos.print_rows(table(delay, nodelay, scale, pg) + photos.rows(photo))
    results = {"delay": delay, "nodelay": nodelay, "scale": scale, "postgres": pg, "photos": photo}
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {OUT / 'results.json'}")


if __name__ == "__main__":
    main()
