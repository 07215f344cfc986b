"""The nodes of an autoscaling service's cluster as they come and go, timed by a driver that
watches them (`harness.cluster_probe ... watch`), and the processes of one of the nodes that
Ray's fake multi-node provider started on this machine, to remove it by force."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from harness.procs import descendants
from harness.service import ROOT, ServiceProcess

# The variable the fake provider gives each node it starts: the node's id.
FAKE_NODE_ID_VARIABLE = b"RAY_OVERRIDE_NODE_ID_FOR_TESTING="


class NodeWatch:
    """Alive node ids over (wall-clock) time, from a driver in a process group of its own."""

    def __init__(self, service: ServiceProcess) -> None:
        self.seen: list[tuple[float, frozenset[str]]] = []
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "harness.cluster_probe", service.ray_address, "watch"],
            cwd=ROOT,
            env=service.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if line.startswith(b"PROBE "):
                when, alive = json.loads(line.removeprefix(b"PROBE "))
                with self._lock:
                    self.seen.append((when, frozenset(alive)))

    def alive(self) -> frozenset[str]:
        with self._lock:
            return self.seen[-1][1] if self.seen else frozenset()

    def wait_for(self, what: str, check: Callable[[frozenset[str]], bool], timeout: float) -> float:
        """The time of the first look since now at which `check(alive nodes)` held."""
        start = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for when, alive in self.seen:
                    if when >= start and check(alive):
                        return when
            if self._process.poll() is not None:
                raise RuntimeError("the node watch stopped")
            time.sleep(0.1)
        raise AssertionError(f"{what}: not within {timeout} s; alive: {sorted(self.alive())}")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()


def fake_node_pids(service: ServiceProcess, node_id: str) -> set[int]:
    """The processes of one node the fake provider started (its raylet, agents and workers):
    those of the service's tree whose environment names the node, and theirs."""
    assert service.process is not None
    marked = set()
    for pid in descendants([service.process.pid, service.ray_head_pgid()]):
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")  # noqa: SIM115
        except OSError:
            continue
        if FAKE_NODE_ID_VARIABLE + node_id.encode() in environ:
            marked.add(pid)
    return descendants(marked)


def kill_fake_node(service: ServiceProcess, node_id: str) -> int:
    """The node gone at once, as a machine lost: SIGKILL to each of its processes; how many."""
    pids = fake_node_pids(service, node_id)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)
