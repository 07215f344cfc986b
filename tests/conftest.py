"""Fixtures: one image server and one running service for the session (real Ray, real HTTP),
and services with their own settings for a module."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from harness.client import Client
from harness.imageserver import ImageServer
from harness.service import ServiceProcess, StartService


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
