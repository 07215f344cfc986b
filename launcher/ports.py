"""The ports `make run` listens on, and the check that each is free before anything starts.

Serve's proxy listens with SO_REUSEPORT, so a second service on the same port started, said
READY and took a share of the first one's connections. A trial bind without SO_REUSEPORT
fails on any listener, SO_REUSEPORT or not; the check must come before Ray starts.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from core.settings import ENV_PREFIX, Settings
from launcher.address import flag_value

# Where the launcher binds the dashboard (`--dashboard-host`).
LOOPBACK = "127.0.0.1"
# Where Ray binds the head's other servers, or on the machine's address, which a trial bind on
# all interfaces covers: `ray start` replaces a loopback --node-ip-address with the machine's
# routable one (`resolve_ip_for_localhost`), and its gRPC servers listen on all interfaces.
ALL_INTERFACES = "0.0.0.0"


# The fixed ports `ray start --head` binds besides those of our settings, with Ray's defaults
# (Ray's `ray start --help`); the rest are picked free at random.
RAY_START_PORTS = (
    ("Ray client server", "--ray-client-server-port", 10001),
    ("Ray dashboard agent", "--dashboard-agent-listen-port", 52365),
)


@dataclass(frozen=True)
class Listener:
    """One port the launcher will listen on, and the setting that moves it."""

    what: str
    host: str
    port: int
    setting: str


def listeners(settings: Settings) -> list[Listener]:
    """The ports named by settings, each on the address it will be bound to."""
    found = [
        Listener("HTTP API", settings.host, settings.port, f"{ENV_PREFIX}PORT"),
        Listener("Ray GCS", ALL_INTERFACES, settings.ray_port, f"{ENV_PREFIX}RAY_PORT"),
        Listener("metrics", ALL_INTERFACES, settings.metrics_port, f"{ENV_PREFIX}METRICS_PORT"),
    ]
    if settings.include_dashboard:
        found.append(
            Listener(
                "Ray dashboard", LOOPBACK, settings.dashboard_port, f"{ENV_PREFIX}DASHBOARD_PORT"
            )
        )
    # Ports with no setting of ours: Ray's defaults unless RAY_START_ARGS moves them.
    for what, flag, default in RAY_START_PORTS:
        given = flag_value(settings.ray_start_args, flag)
        if given is None or given.isdigit():
            port = int(given) if given is not None else default
            found.append(
                Listener(what, ALL_INTERFACES, port, f"{flag}=PORT in {ENV_PREFIX}RAY_START_ARGS")
            )
    return found


def bind_error(host: str, port: int) -> OSError | None:
    """Why a listener could not be bound to `host:port` now, or None when it could."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as trial:
        # A connection of a service stopped a moment ago, in TIME_WAIT, does not make the
        # port busy (Ray and uvicorn set this too); a listener still does, on Linux.
        trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            trial.bind((host, port))
        except OSError as exc:
            return exc
    return None


def refusal(listener: Listener, error: OSError) -> str:
    """The one line that says which port cannot be had and which setting moves it."""
    if error.errno == errno.EADDRINUSE:
        why = "is already in use (another `make run`?)"
    else:
        why = f"cannot be bound: {error.strerror}"
    return (
        f"port {listener.port} on {listener.host} ({listener.what}) {why}; "
        f"move it with {listener.setting}"
    )


def first_refusal(settings: Settings) -> str | None:
    """The refusal for the first port of `settings` that cannot be bound, or None."""
    for listener in listeners(settings):
        error = bind_error(listener.host, listener.port)
        if error is not None:
            return refusal(listener, error)
    return None
