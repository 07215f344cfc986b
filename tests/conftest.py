"""Session fixtures: one image server and one running service (real Ray, real HTTP)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.client import Client
from harness.imageserver import ImageServer
from harness.service import ServiceProcess


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


@pytest.fixture(scope="session")
def client(service: ServiceProcess) -> Client:
    return Client(service.url)
