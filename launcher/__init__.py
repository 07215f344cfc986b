"""`make run` (`python -m launcher`): start a Ray head node and the Serve app in the
foreground; Ctrl-C stops both.

The Ray head runs as a child in its own process group (so the terminal's Ctrl-C reaches only
this launcher, which then saves everything settled before stopping Ray), and it is tied to
this process: if the launcher dies, the kernel sends the head SIGTERM and Ray shuts down.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray import serve

from actors.tracker import NAMESPACE, TRACKER_NAME
from core.settings import IMAGE_SLOTS, Settings, SettingsError
from launcher.address import DEFAULT_NODE_ADDRESS
from launcher.autoscaling import head_autoscaling
from launcher.hint import join_hint
from launcher.ports import first_refusal
from launcher.sessionlogs import link_logs, link_service_discovery
from service.app import build_app
from service.edge import CALLBACK, CALLBACK_VARIABLE

log = logging.getLogger("image_service.launcher")

APP_NAME = "image_service"
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A setting the service cannot use: a usage error, as with the `imgjobs` CLI.
EXIT_BAD_SETTING = 2
# A port another process holds: nothing was started.
EXIT_PORT_BUSY = 1


def die_with_parent() -> None:
    """For `preexec_fn`: the child gets a process group of its own and SIGTERM when the
    launcher dies."""
    os.setsid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def ray_command() -> str:
    return str(Path(sys.executable).with_name("ray"))


def ensure_cluster_token() -> None:
    """Ray's token authentication, on unless the operator says otherwise: the cluster's ports
    run arbitrary code for whoever reaches them. A joining node needs the same token."""
    if os.environ.get("RAY_AUTH_MODE") == "token" and "RAY_AUTH_TOKEN" not in os.environ:
        subprocess.run(
            [ray_command(), "get-auth-token", "--generate"],
            check=True,
            stdout=subprocess.DEVNULL,  # the token itself is never printed or logged
            stderr=subprocess.DEVNULL,
        )


def start_ray_head(settings: Settings) -> subprocess.Popen[bytes]:
    # The address `ray start` will settle on (see `main`), for the autoscaler's own nodes.
    autoscaling_args, autoscaling_env = head_autoscaling(settings, ray.util.get_node_ip_address())
    command = [
        ray_command(),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        f"--node-ip-address={DEFAULT_NODE_ADDRESS}",
        f"--port={settings.ray_port}",
        f"--include-dashboard={'true' if settings.include_dashboard else 'false'}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={settings.dashboard_port}",
        f"--metrics-export-port={settings.metrics_port}",
        f"--resources={json.dumps({IMAGE_SLOTS: settings.concurrency})}",
        *autoscaling_args,
        *settings.ray_start_args,
    ]
    # The tracker is drained before the head is stopped; Ray's own 30 s node drain adds nothing.
    # An operator's own autoscaler variables win.
    env = {**autoscaling_env, **os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "3"}
    log_path = settings.data_dir / "ray-head.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=die_with_parent,
        )
    (settings.data_dir / "ray-head.pgid").write_text(str(process.pid))
    return process


def connect(
    settings: Settings,
    head: subprocess.Popen[bytes],
    stop_requested: threading.Event,
    deadline_seconds: float = 120,
) -> None:
    deadline = time.monotonic() + deadline_seconds
    address = f"127.0.0.1:{settings.ray_port}"
    while True:
        if stop_requested.is_set():
            raise SystemExit("stopped before the ray head was up")
        if head.poll() is not None:
            raise SystemExit(f"ray head exited with code {head.returncode}; see its log")
        try:
            ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
            return
        except (ConnectionError, RuntimeError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"could not connect to the ray head at {address}: {exc}") from exc
            stop_requested.wait(1)


def stop(head: subprocess.Popen[bytes]) -> None:
    try:
        tracker = ray.get_actor(TRACKER_NAME, namespace=NAMESPACE)
        saved: Any = ray.get(tracker.shutdown.remote(), timeout=30)
        log.info("saved %d settled images before stopping", saved)
    except (ValueError, ray.exceptions.RayError) as exc:
        log.warning("could not drain the job tracker: %s", exc)
    try:
        serve.shutdown()
    except ray.exceptions.RayError as exc:
        log.warning("serve shutdown: %s", exc)
    ray.shutdown()
    if head.poll() is None:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def ray_environment(settings: Settings) -> dict[str, str]:
    """Variables Ray and Serve read once, at import, in this process and in every process of
    the cluster it starts; an operator's own value wins.

    Token authentication is on. Serve's HTTP servers answer a header of Serve's own that is not
    UTF-8 with a 400 (`service.edge`), and answer a known job's status themselves. The
    optional fast ingress is Serve's HAProxy front with its throughput-optimized mode (off by
    default: status at the edge is as fast). HAProxy's files get a directory of their own per data
    directory, so two services on one machine do not share them, and a short one: Serve nests
    a 40-digit hash in it and a Unix socket path may not pass 97 characters.
    """
    env = {"RAY_AUTH_MODE": "token", CALLBACK_VARIABLE: CALLBACK}
    if settings.fast_ingress:
        digest = hashlib.sha256(str(settings.data_dir).encode()).hexdigest()[:10]
        haproxy = Path(tempfile.gettempdir()) / f"ih-{digest}"
        env.update(
            RAY_SERVE_ENABLE_HA_PROXY="1",
            RAY_SERVE_THROUGHPUT_OPTIMIZED="1",
            RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=str(haproxy / "haproxy.cfg"),
            RAY_SERVE_HAPROXY_SOCKET_PATH=str(haproxy / "admin.sock"),
            RAY_SERVE_HAPROXY_SERVER_STATE_BASE=str(haproxy),
            RAY_SERVE_HAPROXY_SERVER_STATE_FILE=str(haproxy / "server-state"),
        )
    return env


def load_settings() -> Settings:
    """The settings, or exit with the one line that names the variable at fault: a traceback
    before it only hid it."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(exc, file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_SETTING) from None


def refuse_busy_ports(settings: Settings) -> None:
    refused = first_refusal(settings)
    if refused is not None:
        print(refused, file=sys.stderr, flush=True)
        raise SystemExit(EXIT_PORT_BUSY)


def session_logs_directory() -> Path:
    """The logs directory of the Ray session this driver joined (`/tmp/ray/session_latest`
    points to another once another session starts)."""
    # Ray has no public call for it; the driver's node object knows the session it joined.
    node = ray._private.worker._global_node
    assert node is not None, "called before ray.init"
    return Path(node.get_logs_dir_path())


def main() -> None:
    if os.environ.get("IMAGE_SERVICE_LAUNCHER_ENV") != "1":
        settings = load_settings()
        for name, value in ray_environment(settings).items():
            os.environ.setdefault(name, value)
        os.environ["IMAGE_SERVICE_LAUNCHER_ENV"] = "1"
        # Start afresh so that Ray, imported above, reads the variables just set.
        os.execv(sys.executable, [sys.executable, "-m", "launcher", *sys.argv[1:]])
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings()
    refuse_busy_ports(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if "RAY_SERVE_HAPROXY_SERVER_STATE_BASE" in os.environ:
        Path(os.environ["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]).mkdir(mode=0o700, exist_ok=True)
    # Ray processes inherit this environment but not this working directory: pin the paths.
    os.environ["IMAGE_SERVICE_DATA_DIR"] = str(settings.data_dir)
    os.environ["IMAGE_SERVICE_STORE_MASTER"] = str(settings.store_master)
    stop_requested = threading.Event()
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: stop_requested.set())

    ensure_cluster_token()
    head = start_ray_head(settings)
    try:
        connect(settings, head, stop_requested)
        session_logs = session_logs_directory()
        log.info("ray session logs (JSON lines in worker-*.err) in %s", session_logs)
        try:
            log.info("logs linked as %s", link_logs(settings.data_dir, session_logs))
        except FileExistsError as exc:
            log.warning("%s", exc)
        if settings.include_dashboard:
            try:
                link_service_discovery(settings.data_dir, session_logs.parent)
            except FileExistsError as exc:
                log.warning("%s", exc)
        # HeadOnly: the API's state is on the head, and nodes sharing a host (as in the tests)
        # would otherwise each start a proxy on the same port.
        serve.start(
            proxy_location="HeadOnly",
            http_options={"host": settings.host, "port": settings.port},
        )
        serve.run(build_app(), name=APP_NAME, route_prefix="/", blocking=False)
        url = f"http://{settings.host}:{settings.port}"
        log.info("image service ready at %s (API docs at %s/docs)", url, url)
        if settings.include_dashboard:
            log.info("ray dashboard at http://127.0.0.1:%d", settings.dashboard_port)
        # The address Ray settled on: `ray start` replaces a loopback --node-ip-address with
        # the machine's routable one (`ray._private.services.resolve_ip_for_localhost`).
        log.info("%s", join_hint(ray.util.get_node_ip_address(), settings.ray_port))
        print(f"READY {url}", flush=True)
        while not stop_requested.wait(timeout=1):
            if head.poll() is not None:
                raise SystemExit(f"ray head exited with code {head.returncode}")
    finally:
        log.info("stopping")
        stop(head)
