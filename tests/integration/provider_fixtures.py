"""Fixtures for the provider contract tests (star-imported by them): echo replica, fake backend, app."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway_plugin.app import create_app
from gateway_plugin.settings import ProviderSettings
from tests.fakes import EchoServer, FakeBackend

__all__ = ["AUTH", "PASSWORD", "USER", "app", "backend", "client", "echo", "secrets_dir", "settings"]

USER, PASSWORD = "admin", "s3cret pass"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


@pytest.fixture(scope="session")
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture
def backend(echo: EchoServer) -> Iterator[FakeBackend]:
    fake = FakeBackend(replica_url=echo.url)
    yield fake
    fake.close()


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    d = tmp_path / "secrets"
    d.mkdir()
    (d / "basic-auth-user").write_text(USER + "\n")
    (d / "basic-auth-password").write_text(PASSWORD + "\n")
    return d


@pytest.fixture
def settings(tmp_path: Path, secrets_dir: Path) -> ProviderSettings:
    return ProviderSettings(
        state_dir=tmp_path, secret_mount_path=secrets_dir, basic_auth=True,
        max_system_body_bytes=64 * 1024, max_invoke_body_bytes=256 * 1024,
        invoke_timeout_s=2.0, connect_timeout_s=1.0, scale_from_zero_timeout_s=2.0,
    )


@pytest.fixture
def app(backend: FakeBackend, settings: ProviderSettings) -> Flask:
    return create_app(backend, settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
