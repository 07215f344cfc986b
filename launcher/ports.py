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
    """The ports named by settings, each on the address it will be bound to. `ray start` takes
    the last of a flag given twice, and RAY_START_ARGS come after the launcher's own flags: a
    port given there is the one Ray binds."""

    def ray_port(what: str, host: str, flag: str, setting: str, port: int) -> Listener:
        given = flag_value(settings.ray_start_args, flag)
        if given is not None and given.isdigit():
            return Listener(what, host, int(given), f"{flag}=PORT in {ENV_PREFIX}RAY_START_ARGS")
        return Listener(what, host, port, f"{ENV_PREFIX}{setting}")

    found = [
        Listener("HTTP API", settings.host, settings.port, f"{ENV_PREFIX}PORT"),
        ray_port("Ray GCS", ALL_INTERFACES, "--port", "RAY_PORT", settings.ray_port),
        ray_port(
            "metrics", ALL_INTERFACES, "--metrics-export-port", "METRICS_PORT",
            settings.metrics_port,
        ),
    ]  # fmt: skip
    if settings.include_dashboard:
        found.append(
            ray_port(
                "Ray dashboard", LOOPBACK, "--dashboard-port", "DASHBOARD_PORT",
                settings.dashboard_port,
            )
        )  # fmt: skip
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
    """The refusal for the first port of `settings` that cannot be bound, or None. Two of
    the service's own listeners on one port are refused too: each trial bind is let go before
    the next, so only this says that the second would find the port taken by the first."""
    planned = listeners(settings)
    for index, listener in enumerate(planned):
        for earlier in planned[:index]:
            if earlier.port == listener.port != 0:  # 0: any free port, each its own
                return (
                    f"port {listener.port} is named for both the {earlier.what} and the "
                    f"{listener.what}; move one with {listener.setting}"
                )
    for listener in planned:
        error = bind_error(listener.host, listener.port)
        if error is not None:
            return refusal(listener, error)
    return None
