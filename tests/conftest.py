"""Fixtures: one image server and one running service for the session (real Ray, real HTTP),
and services with their own settings for a module. Tests that start Ray are marked `cluster`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

import pytest
import ray

from harness.client import Client
from harness.imageserver import ImageServer
from harness.service import ServiceProcess, StartService, WorkerNode

# The fixtures below that start Ray and the service. A test using one, itself or through
# another fixture, is marked `cluster`; a module that starts Ray itself says so with
# `pytestmark = pytest.mark.cluster`.
CLUSTER_FIXTURES = frozenset({"service", "service_with"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


def pytest_collection_finish(session: pytest.Session) -> None:
    """A run without `cluster` tests (`make unit`) starts no Ray: a test that tries lacks its
    mark, and fails at once rather than quietly making the fast run slow."""
    if any(item.get_closest_marker("cluster") for item in session.items):
        return
    patch = pytest.MonkeyPatch()
    patch.setattr(ServiceProcess, "start", _refuse("ServiceProcess.start"))
    patch.setattr(WorkerNode, "start", _refuse("WorkerNode.start"))
    patch.setattr(ray, "init", _refuse("ray.init"))  # Ray's auto-init goes through it too
    session.config.add_cleanup(patch.undo)


def _refuse(what: str) -> Callable[..., NoReturn]:
    def refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
        # pytest.fail is not an Exception: no `except Exception` in the code under test hides it.
        pytest.fail(
            f"{what} in a run without `cluster` tests: mark the test `pytest.mark.cluster` or "
            f"give it a fixture of {sorted(CLUSTER_FIXTURES)} (tests/conftest.py)",
            pytrace=False,
        )

    return refuse


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    server = ImageServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = ServiceProcess(data_dir=tmp_path_factory.mktemp("service")).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def service_with(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartService]:
    """Starts services with environment overrides for one module; they stop at its end."""
    started: list[ServiceProcess] = []

    def start(name: str, env_overrides: Mapping[str, str]) -> ServiceProcess:
        data_dir = tmp_path_factory.mktemp(name)
        running = ServiceProcess(data_dir, env_overrides=dict(env_overrides)).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def client(service: ServiceProcess) -> Client:
    return Client(service.url)
