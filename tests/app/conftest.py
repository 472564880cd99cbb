"""Fixtures of the service tests: an in-process client and the real server on loopback, both on
the tiny trained model (`model_dir`, tests/conftest.py); the builders are in helpers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.helpers import LiveServer, make_settings, running_server, wait_ready


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(model_dir))) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="session")
def live_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The service with its default settings on a free loopback port."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(model_dir, log) as server:
        yield server
