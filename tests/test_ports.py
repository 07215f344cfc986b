"""The launcher's check that its ports are free, against sockets the test holds: a listener
with SO_REUSEPORT (as Serve's proxy), one on all interfaces, a port left in TIME_WAIT."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from core.settings import Settings
from launcher.ports import bind_error, first_refusal, listeners, refusal

pytestmark = pytest.mark.timeout(30)


def _listening(host: str, reuse_port: bool = False, reuse_address: bool = False) -> socket.socket:
    sock = socket.socket()
    if reuse_address:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    sock.listen()
    return sock


@pytest.fixture
def held() -> Iterator[socket.socket]:
    sock = _listening("127.0.0.1")
    yield sock
    sock.close()


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return _port(sock)


def _settings(**env: str) -> Settings:
    # Every port free unless the test says otherwise; no dashboard unless asked for.
    base = {
        "IMAGE_SERVICE_PORT": str(_free_port()),
        "IMAGE_SERVICE_RAY_PORT": str(_free_port()),
        "IMAGE_SERVICE_METRICS_PORT": str(_free_port()),
        "IMAGE_SERVICE_DASHBOARD_PORT": str(_free_port()),
        "IMAGE_SERVICE_INCLUDE_DASHBOARD": "0",
        "IMAGE_SERVICE_RAY_START_ARGS": f"--ray-client-server-port={_free_port()} "
        f"--dashboard-agent-listen-port={_free_port()}",
    }
    return Settings.from_env({**base, **env})


def test_a_free_port_binds() -> None:
    assert bind_error("127.0.0.1", _free_port()) is None


def test_a_listener_makes_the_port_busy(held: socket.socket) -> None:
    error = bind_error("127.0.0.1", _port(held))
    assert error is not None and error.errno == 98  # EADDRINUSE


def test_a_listener_with_so_reuseaddr_is_seen() -> None:
    with _listening("127.0.0.1", reuse_address=True) as server:
        assert bind_error("127.0.0.1", _port(server)) is not None


def test_a_listener_with_so_reuseport_is_seen() -> None:
    # Serve's proxy listens so: a second proxy with SO_REUSEPORT would share the port.
    with _listening("127.0.0.1", reuse_port=True) as proxy:
        assert bind_error("127.0.0.1", _port(proxy)) is not None


def test_a_listener_on_all_interfaces_makes_loopback_busy() -> None:
    with _listening("0.0.0.0") as wide:
        assert bind_error("127.0.0.1", _port(wide)) is not None


def test_a_port_in_time_wait_is_free() -> None:
    # The service stopped a moment ago: its server side closed first and left TIME_WAIT.
    # Linux lets a bind pass one only when both set SO_REUSEADDR, as uvicorn and gRPC do.
    with _listening("127.0.0.1", reuse_address=True) as server:
        port = _port(server)
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()
        client.recv(1)
        client.close()
    assert bind_error("127.0.0.1", port) is None


def test_an_address_not_of_this_machine_is_an_error() -> None:
    error = bind_error("192.0.2.1", _free_port())  # TEST-NET-1, on no interface here
    assert error is not None


def test_the_refusal_names_the_port_and_the_setting_that_moves_it(held: socket.socket) -> None:
    port = _port(held)
    settings = _settings(IMAGE_SERVICE_PORT=str(port))
    assert first_refusal(settings) == (
        f"port {port} on 127.0.0.1 (HTTP API) is already in use (another `make run`?); "
        "move it with IMAGE_SERVICE_PORT"
    )


@pytest.mark.parametrize(
    ("setting", "what"),
    [
        ("IMAGE_SERVICE_RAY_PORT", "Ray GCS"),
        ("IMAGE_SERVICE_METRICS_PORT", "metrics"),
        ("IMAGE_SERVICE_DASHBOARD_PORT", "Ray dashboard"),
    ],
)
def test_each_ray_port_is_checked(held: socket.socket, setting: str, what: str) -> None:
    port = _port(held)
    settings = _settings(**{setting: str(port), "IMAGE_SERVICE_INCLUDE_DASHBOARD": "1"})
    refused = first_refusal(settings)
    assert refused is not None
    host = "127.0.0.1" if what == "Ray dashboard" else "0.0.0.0"
    assert refused.startswith(f"port {port} on {host} ({what}) is already in use")
    assert refused.endswith(f"move it with {setting}")


def test_the_dashboard_port_is_not_checked_without_the_dashboard(held: socket.socket) -> None:
    settings = _settings(IMAGE_SERVICE_DASHBOARD_PORT=str(_port(held)))
    assert first_refusal(settings) is None


def test_all_free_is_no_refusal() -> None:
    assert first_refusal(_settings()) is None


def test_rays_ports_are_checked_on_all_interfaces() -> None:
    # Ray binds them there (or on the machine's address) whatever IMAGE_SERVICE_HOST says: a
    # listener on any address of the port is in its way.
    settings = _settings(IMAGE_SERVICE_INCLUDE_DASHBOARD="1")
    hosts = {listener.what: listener.host for listener in listeners(settings)}
    assert hosts == {
        "HTTP API": "127.0.0.1",
        "Ray GCS": "0.0.0.0",
        "metrics": "0.0.0.0",
        "Ray dashboard": "127.0.0.1",
        "Ray client server": "0.0.0.0",
        "Ray dashboard agent": "0.0.0.0",
    }


def test_ray_ports_without_a_setting_take_rays_defaults_unless_moved() -> None:
    settings = _settings(IMAGE_SERVICE_RAY_START_ARGS="--dashboard-agent-listen-port 7777")
    ports = {listener.what: listener.port for listener in listeners(settings)}
    assert (ports["Ray client server"], ports["Ray dashboard agent"]) == (10001, 7777)


@pytest.mark.parametrize(
    ("flag", "what"),
    [
        ("--ray-client-server-port", "Ray client server"),
        ("--dashboard-agent-listen-port", "Ray dashboard agent"),
    ],
)
def test_a_busy_ray_start_port_names_the_flag_that_moves_it(
    held: socket.socket, flag: str, what: str
) -> None:
    port = _port(held)
    others = f"--ray-client-server-port={_free_port()} --dashboard-agent-listen-port={_free_port()}"
    settings = _settings(IMAGE_SERVICE_RAY_START_ARGS=f"{others} {flag}={port}")
    assert first_refusal(settings) == (
        f"port {port} on 0.0.0.0 ({what}) is already in use (another `make run`?); "
        f"move it with {flag}=PORT in IMAGE_SERVICE_RAY_START_ARGS"
    )


def test_an_error_other_than_in_use_is_quoted() -> None:
    settings = _settings()
    [http, *_] = listeners(settings)
    assert refusal(http, PermissionError(13, "Permission denied")) == (
        f"port {settings.port} on 127.0.0.1 (HTTP API) cannot be bound: Permission denied; "
        "move it with IMAGE_SERVICE_PORT"
    )


def test_the_http_port_equal_to_the_metrics_port_is_refused() -> None:
    # Each trial bind is closed before the next, so two of our own listeners on one port both
    # pass the check; Ray then takes the port and the HTTP proxy cannot listen after start.
    shared = str(_free_port())
    settings = _settings(IMAGE_SERVICE_PORT=shared, IMAGE_SERVICE_METRICS_PORT=shared)
    assert first_refusal(settings) is not None


def test_a_metrics_port_moved_by_ray_start_args_is_the_one_checked() -> None:
    # start_ray_head puts RAY_START_ARGS after its own --metrics-export-port, so the operator's
    # value is the one Ray binds: the check binds that port, not IMAGE_SERVICE_METRICS_PORT.
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        busy = int(held.getsockname()[1])
        settings = _settings(
            IMAGE_SERVICE_RAY_START_ARGS=f"--ray-client-server-port={_free_port()} "
            f"--dashboard-agent-listen-port={_free_port()} --metrics-export-port={busy}"
        )
        refused = first_refusal(settings)
    assert refused is not None and str(busy) in refused
