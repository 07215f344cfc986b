"""The real service (the `make run` launcher) as a child process group, and Ray worker nodes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from core.settings import Settings
from harness.netns import in_namespace
from harness.procs import alive, descendants, role_of
from harness.stores import StoreDatabase
from launcher import ray_environment

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def host_ports(head: bool, width: int = 20) -> dict[str, str]:
    """Ports Ray and Serve would otherwise take at fixed numbers or from shared ranges, chosen
    once per service (or node) so that several run on this machine at once. Replicas listen
    for HAProxy on a port from a range, with SO_REUSEPORT: two services sharing the default
    range would take each other's traffic."""
    http, grpc = free_port(), free_port()
    ports = {
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + width),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc + width),
    }
    if head:
        ports["IMAGE_SERVICE_RAY_START_ARGS"] = (
            f"--ray-client-server-port={free_port()} "
            f"--dashboard-agent-listen-port={free_port()} --num-cpus=2"
        )
    return ports


@dataclass
class ServiceProcess:
    """One service: its own Ray head, Serve app and data directory, on loopback, or inside the
    network namespace `netns` at its address `host` (`harness.netns`)."""

    data_dir: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    netns: str | None = None
    port: int = field(default_factory=free_port)
    ray_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    own_ports: dict[str, str] = field(default_factory=lambda: host_ports(head=True))
    # What runs it: `launcher` is `make run`, `launcher.monitor` is `make monitor`.
    module: str = "launcher"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ray_address(self) -> str:
        return f"{self.host}:{self.ray_port}"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "RAY_AUTH_MODE": "token",
                "IMAGE_SERVICE_PORT": str(self.port),
                "IMAGE_SERVICE_RAY_PORT": str(self.ray_port),
                "IMAGE_SERVICE_METRICS_PORT": str(self.metrics_port),
                "IMAGE_SERVICE_DATA_DIR": str(self.data_dir),
                "IMAGE_SERVICE_ALLOW_PRIVATE_URLS": "1",
                "IMAGE_SERVICE_GPU_DELAY": "0.01-0.03",
                "IMAGE_SERVICE_CONCURRENCY": "32",
                "IMAGE_SERVICE_RETRY_BACKOFF": "0.05",
                "IMAGE_SERVICE_CALLBACK_BACKOFF": "0.05",
                "IMAGE_SERVICE_DOWNLOAD_TIMEOUT": "4",
                "IMAGE_SERVICE_SUBMIT_RATE": "1000",
                "IMAGE_SERVICE_SUBMIT_BURST": "1000",
                "IMAGE_SERVICE_READ_TIMEOUT": "1.5",
                "IMAGE_SERVICE_INCLUDE_DASHBOARD": "0",
                **self.own_ports,
            }
        )
        if self.host != "127.0.0.1":
            # Serve listens at the address, and the head names it as its node's address (the
            # launcher's --node-ip-address=127.0.0.1 comes first; ray start takes the last).
            env["IMAGE_SERVICE_HOST"] = self.host
            env["IMAGE_SERVICE_RAY_START_ARGS"] += f" --node-ip-address={self.host}"
        env.update(self.env_overrides)
        return env

    def start(self, timeout: float = 180) -> ServiceProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "service.log", "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            in_namespace(self.netns, [sys.executable, "-m", self.module]),
            cwd=ROOT,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited early; see {self.data_dir / 'service.log'}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        stacks = self.dump_stacks()
        self.stop()
        raise RuntimeError(
            f"service did not become healthy; see {self.data_dir / 'service.log'} and {stacks}"
        )

    def dump_stacks(self, roles: tuple[str, ...] = ("tracker", "serve replica")) -> Path:
        """Write the Python stacks of the service's processes of these roles (py-spy) to a file
        in its data directory, for a test that found it stuck; returns the file."""
        out = self.data_dir / "stacks.txt"
        py_spy = Path(sys.executable).parent / "py-spy"  # comes with ray[serve]'s dashboard
        with open(out, "a") as handle:
            for role in roles:
                for pid in self.pids_of(role):
                    handle.write(f"==== {role} {pid} at {time.strftime('%H:%M:%S')}\n")
                    handle.flush()
                    if not py_spy.exists():
                        handle.write("(py-spy is not installed)\n")
                        continue
                    subprocess.run(
                        [str(py_spy), "dump", "--pid", str(pid)],
                        stdout=handle, stderr=subprocess.STDOUT, timeout=30, check=False,
                    )  # fmt: skip
        return out

    def ray_head_pgid(self) -> int:
        return int((self.data_dir / "ray-head.pgid").read_text())

    def stop(self, timeout: float = 120) -> None:
        """The clean stop of Ctrl-C: SIGINT to the launcher, which drains and stops Ray."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Every process of the service, SIGKILL, at once: the launcher's group and Ray's, and
        Ray's workers (the tracker, the image workers, Serve's actors), which Ray puts each in
        a process group of its own: killed with the groups only, they outlived the rest for a
        while, long enough for the tracker to write results after its "crash"."""
        assert self.process is not None
        head_pgid = self.ray_head_pgid()
        everything = descendants([self.process.pid, head_pgid])
        for pid in everything:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pgid in (self.process.pid, head_pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.process.wait()
        wait_group_gone(head_pgid)
        deadline = time.monotonic() + 60
        while left := alive(everything):
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes {sorted(left)} still alive")
            time.sleep(0.1)

    def pids_of(self, role: str) -> list[int]:
        """The service's processes of one role (`harness.procs.ROLES`: "serve replica", ...)."""
        assert self.process is not None
        pids = descendants([self.process.pid, self.ray_head_pgid()])
        return sorted(pid for pid in pids if role_of(pid) == role)

    def database(self) -> StoreDatabase:
        """The service's job database: its PostgreSQL database, or the SQLite file beside it."""
        url = self.env_overrides.get("IMAGE_SERVICE_DATABASE_URL")
        if url:
            return StoreDatabase("postgres", url)
        return StoreDatabase("sqlite", str(self.data_dir / "jobs.sqlite3"))

    def ray_log(self, pid: int) -> str:
        """What one process of the service's cluster (an actor: the tracker, a worker) wrote
        to stderr, its log lines among it, as Ray keeps it in the cluster's session directory
        (named after the head's `ray start` process)."""
        root = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir()), "ray")
        sessions = root.glob(f"session_*_{self.ray_head_pgid()}")
        session = max(sessions, key=lambda path: path.stat().st_mtime)
        return "".join(
            path.read_text(errors="replace")
            for path in sorted((session / "logs").glob(f"worker-*-{pid}.err"))
        )

    def alive_nodes(self) -> set[str]:
        return {node for node, alive, _slots in self.probe("nodes") if alive}

    def probe(self, what: str) -> Any:
        """Ask the cluster (not the API) for process ids, from a separate driver process."""
        output = subprocess.run(
            in_namespace(
                self.netns, [sys.executable, "-m", "harness.cluster_probe", self.ray_address, what]
            ),
            cwd=ROOT,
            env=self.environment(),
            capture_output=True,
            timeout=120,
        )
        if output.returncode != 0:
            raise RuntimeError(f"probe {what} failed: {output.stderr.decode()[-2000:]}")
        # Ray may print to stdout too; the answer is the line the probe marked.
        [answer] = [
            line for line in output.stdout.decode().splitlines() if line.startswith("PROBE ")
        ]
        return json.loads(answer.removeprefix("PROBE "))


# What the `service_with` fixture gives: start a service with these environment overrides,
# in a data directory named after the first argument.
StartService = Callable[[str, Mapping[str, str]], ServiceProcess]


def wait_group_gone(pgid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise RuntimeError(f"process group {pgid} still alive")


@dataclass
class WorkerNode:
    """A Ray worker node joined to a service's cluster: `ray start --address ... --block`, on
    loopback or inside the network namespace `netns` at its address `host`."""

    service: ServiceProcess
    image_slots: int
    host: str = "127.0.0.1"
    netns: str | None = None
    process: subprocess.Popen[bytes] | None = None
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    own_ports: dict[str, str] = field(default_factory=lambda: host_ports(head=False))

    def start(self, timeout: float = 120) -> WorkerNode:
        """Start the node and wait until the cluster lists it: nodes on one host must join one
        at a time, since a joining raylet picks its socket names by looking at what exists."""
        known = self.service.alive_nodes()
        self._launch()
        try:
            deadline = time.monotonic() + timeout
            while not self.service.alive_nodes() - known:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"ray start exited with {self.process.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError("the node did not join the cluster")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        ray_bin = str(Path(sys.executable).with_name("ray"))
        log = open(self.service.data_dir / f"node-{self.tag}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            in_namespace(self.netns, [
                ray_bin, "start", "--block", "--disable-usage-stats",
                f"--address={self.service.ray_address}",
                f"--node-ip-address={self.host}",
                "--num-cpus=1",
                f"--resources={json.dumps({'image_slots': self.image_slots})}",
                # Every port a node binds, chosen here, so nodes on one host never collide.
                f"--node-manager-port={free_port()}",
                f"--object-manager-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
            ]),
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def environment(self) -> dict[str, str]:
        """The head's Ray variables, with this node's own HAProxy files."""
        env = {**self.service.environment(), **self.own_ports}
        own_dir = self.service.data_dir / f"node-{self.tag}"
        own_dir.mkdir(parents=True, exist_ok=True)
        env.update(
            ray_environment(Settings.from_env({**env, "IMAGE_SERVICE_DATA_DIR": str(own_dir)}))
        )
        return env

    def kill(self) -> None:
        """The node dies at once: its raylet and every process it started."""
        assert self.process is not None
        pids = descendants([self.process.pid])
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
