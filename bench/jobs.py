"""Driving the service under test from a benchmark: helper processes, a job submitted and
waited for, the service's processes and their peak memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests

from harness.procs import descendants, role_of, rss_bytes
from harness.service import ROOT, ServiceProcess


@contextmanager
def child(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A helper process in its own group, stopped by group id when done."""
    process = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE
    )
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def wait_http(url: str) -> None:
    for _ in range(100):
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def service_pids(service: ServiceProcess) -> set[int]:
    assert service.process is not None
    return descendants([service.process.pid, service.ray_head_pgid()])


def submit(service: ServiceProcess, payload: dict[str, Any]) -> tuple[int, float]:
    body = json.dumps(payload).encode()
    started = time.perf_counter()
    response = requests.post(
        f"{service.url}/api/submit/",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    elapsed = time.perf_counter() - started
    assert response.status_code == 201, response.text
    return int(response.json()["job_id"]), elapsed


def wait_done(
    service: ServiceProcess, job_id: int, poll: float = 0.05, expected: str = "completed"
) -> float:
    """When the job ended, by `time.perf_counter`; it must have ended as `expected`."""
    while True:
        body = requests.get(
            f"{service.url}/api/status", params={"jobid": job_id}, timeout=60
        ).json()
        if body["status"] != "ongoing":
            assert body["status"] == expected, body
            return time.perf_counter()
        time.sleep(poll)


class PeakMemory:
    """The largest resident memory of the whole service, sampled every half second."""

    def __init__(self, service: ServiceProcess) -> None:
        self.peak = 0
        self.peak_by_role: dict[str, int] = {}  # the peak's bytes, by process role
        self._service = service
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            by_role: dict[str, int] = {}
            for pid in service_pids(self._service):
                role = role_of(pid)
                by_role[role] = by_role.get(role, 0) + rss_bytes([pid])
            if sum(by_role.values()) > self.peak:
                self.peak, self.peak_by_role = sum(by_role.values()), by_role

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak
