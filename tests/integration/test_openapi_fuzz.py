"""Fuzz the provider (in-process WSGI, fake backend, real echo replica) against its OpenAPI
document: no 5xx, every response conforms to the document, and the stored state stays valid."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import gateway_plugin
from gateway_plugin.app import create_app
from gateway_plugin.settings import ProviderSettings
from gateway_plugin.types import NAME_RE
from tests.fakes import EchoServer, FakeBackend
from tests.integration.provider_fixtures import AUTH, PASSWORD, USER

SPEC = Path(gateway_plugin.__file__).parent / "openapi.yaml"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]


@pytest.fixture(scope="module")
def fuzz_backend() -> Iterator[FakeBackend]:
    with EchoServer() as echo:
        fake = FakeBackend(replica_url=echo.url, follow_idle_s=0.05)
        yield fake
        fake.close()
        _assert_state_valid(fake)
        assert len(fake.calls) > 20, "the fuzzer barely reached the backend"


@pytest.fixture(scope="module")
def fuzz_app(fuzz_backend: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    secrets = tmp_path_factory.mktemp("fuzz-secrets")
    (secrets / "basic-auth-user").write_text(USER)
    (secrets / "basic-auth-password").write_text(PASSWORD)
    app = create_app(fuzz_backend, ProviderSettings(
        state_dir=secrets.parent, secret_mount_path=secrets, max_system_body_bytes=64 * 1024,
        invoke_timeout_s=2.0, scale_from_zero_timeout_s=0.2))
    seen: list[int] = []
    app.after_request(lambda response: (seen.append(response.status_code), response)[1])
    app.extensions["fuzz_statuses"] = seen
    client = app.test_client()
    assert client.post("/system/functions", json={"service": "echo", "image": "echo"},
                       headers=AUTH).status_code == 202
    assert client.post("/system/secrets", json={"name": "s", "value": "v"},
                       headers=AUTH).status_code == 202
    yield app
    assert len(seen) > 200 and any(code == 202 for code in seen[2:]), "the fuzzer reached too little"


schema = schemathesis.openapi.from_path(SPEC)
schema.location = "/"  # served in-process: requests go to the WSGI app, not a URL


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_provider_conforms_to_its_openapi(case: schemathesis.Case, fuzz_app: Flask) -> None:
    case.operation.schema.app = fuzz_app  # the app lives in a module fixture; schema loads at import
    case.call_and_validate(headers=AUTH, checks=CHECKS, app=fuzz_app)


def _assert_state_valid(backend: FakeBackend) -> None:
    """Whatever the fuzzer sent, what was stored is still a valid desired state."""
    for namespace in backend.namespaces():
        for state in backend.list(namespace):
            spec = state.spec
            assert NAME_RE.match(spec.name) and len(spec.name) <= 63
            assert spec.image.strip()
            assert 0 <= state.replicas <= spec.scale.max_replicas
            assert 1 <= spec.share.sm_pct <= 100
            assert 0 < spec.share.quota_request_frac <= spec.share.quota_limit_frac <= 1
            assert set(spec.secrets) <= set(backend.list_secrets(namespace))
