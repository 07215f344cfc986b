"""Fixtures: one image server and one running service for the session (real Ray, real HTTP),
and services with their own settings for a module; one PostgreSQL server for the session, and
a fresh database per test (`database`: the job stores' tests run on SQLite and PostgreSQL).
Tests that start Ray are marked `cluster`; tests that need the PostgreSQL server, `postgres`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest
import ray

from harness.client import Client
from harness.imageserver import ImageServer
from harness.postgres import PostgresServer
from harness.service import ServiceProcess, StartService, WorkerNode
from harness.stores import StoreDatabase

# The fixtures below that start Ray and the service. A test using one, itself or through
# another fixture, is marked `cluster`; a module that starts Ray itself says so with
# `pytestmark = pytest.mark.cluster`.
CLUSTER_FIXTURES = frozenset({"service", "service_with"})
# The fixtures that start the PostgreSQL server or need it: a test using one is marked
# `postgres` (the `database` fixture's PostgreSQL parameter carries the mark itself).
POSTGRES_FIXTURES = frozenset({"postgres_server", "postgres_url"})
MARKED_BY_FIXTURES = {"cluster": CLUSTER_FIXTURES, "postgres": POSTGRES_FIXTURES}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for mark, fixtures in MARKED_BY_FIXTURES.items():
            if fixtures & set(getattr(item, "fixturenames", ())):
                item.add_marker(mark)


def pytest_collection_finish(session: pytest.Session) -> None:
    """A run without `cluster` tests (`make unit`) starts no Ray, and one without `postgres`
    tests no PostgreSQL server: a test that tries lacks its mark, and fails at once rather
    than quietly making the fast run slow."""
    patch = pytest.MonkeyPatch()
    if not any(item.get_closest_marker("cluster") for item in session.items):
        patch.setattr(ServiceProcess, "start", _refuse("ServiceProcess.start", "cluster"))
        patch.setattr(WorkerNode, "start", _refuse("WorkerNode.start", "cluster"))
        # Ray's auto-init goes through it too.
        patch.setattr(ray, "init", _refuse("ray.init", "cluster"))
    if not any(item.get_closest_marker("postgres") for item in session.items):
        patch.setattr(PostgresServer, "start", _refuse("PostgresServer.start", "postgres"))
    session.config.add_cleanup(patch.undo)


def _refuse(what: str, mark: str) -> Callable[..., NoReturn]:
    def refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
        # pytest.fail is not an Exception: no `except Exception` in the code under test hides it.
        pytest.fail(
            f"{what} in a run without `{mark}` tests: mark the test `pytest.mark.{mark}` or "
            f"give it a fixture of {sorted(MARKED_BY_FIXTURES[mark])} (tests/conftest.py)",
            pytrace=False,
        )

    return refuse


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    server = ImageServer().start()
    yield server
    server.stop()


@pytest.fixture
def fresh_image_counts(image_server: ImageServer) -> None:
    """The image server's request counts from zero: a module that runs twice (once per backend)
    asks the same paths again, and its tests count the requests."""
    with image_server.lock:
        image_server.hits.clear()
        image_server.log.clear()


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    """The job store of the services a test starts: SQLite, unless its module runs on both
    (`harness.stores.ON_BOTH_BACKENDS`)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def store_env(backend: str, request: pytest.FixtureRequest) -> Callable[[str], dict[str, str]]:
    """The settings that give a service its own empty database on the test's backend."""

    def env(name: str) -> dict[str, str]:
        if backend == "sqlite":
            return {}
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return {"IMAGE_SERVICE_DATABASE_URL": server.empty_database(name)}

    return env


@pytest.fixture(scope="session")
def service(
    tmp_path_factory: pytest.TempPathFactory, store_env: Callable[[str], dict[str, str]]
) -> Iterator[ServiceProcess]:
    running = ServiceProcess(
        data_dir=tmp_path_factory.mktemp("service"), env_overrides=store_env("service")
    ).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def service_with(
    tmp_path_factory: pytest.TempPathFactory, store_env: Callable[[str], dict[str, str]]
) -> Iterator[StartService]:
    """Starts services with environment overrides for one module; they stop at its end."""
    started: list[ServiceProcess] = []

    def start(name: str, env_overrides: Mapping[str, str]) -> ServiceProcess:
        data_dir = tmp_path_factory.mktemp(name)
        overrides = {**store_env(data_dir.name), **env_overrides}
        running = ServiceProcess(data_dir, env_overrides=overrides).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def client(service: ServiceProcess) -> Client:
    return Client(service.url)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (`make test` installs its binaries if missing)."""
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """An empty database on the session's server (emptied anew for each test)."""
    return postgres_server.empty_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreDatabase]:
    """An empty job database of each backend in turn; the stores opened on it close after."""
    if request.param == "sqlite":
        opened = StoreDatabase("sqlite", str(tmp_path / "jobs.sqlite3"))
    else:
        opened = StoreDatabase("postgres", request.getfixturevalue("postgres_url"))
    yield opened
    opened.close()
