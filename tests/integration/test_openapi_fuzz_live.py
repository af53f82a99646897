"""Fuzz the RUNNING provider (gunicorn, local backend, real replicas) against its OpenAPI document:
no 5xx, responses conform, and afterwards the stored desired state is still valid and served."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

import gateway_plugin
from fastgshare import keys
from fastgshare.platform import Platform, PlatformInfo
from gateway_plugin.types import NAME_RE

ROOT = Path(__file__).resolve().parents[2]
SPEC = Path(gateway_plugin.__file__).parent / "openapi.yaml"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformInfo]:
    platform = Platform(tmp_path_factory.mktemp("fuzz-live"), port=0)
    info = platform.start()
    client = redis.Redis.from_url(info.redis_url)
    client.hset(keys.images(), "fuzz/noop", json.dumps({
        "handler_dir": str(ROOT / "functions" / "noop"),
        "template_dir": str(ROOT / "function_templates" / "python3-torch")}))
    s = requests.Session()
    s.auth = info.auth
    body = {"service": "echo", "image": "fuzz/noop", "labels": {"com.openfaas.scale.max": "2"}}
    assert s.post(f"{info.url}/system/functions", json=body).status_code == 202
    assert s.post(f"{info.url}/system/secrets", json={"name": "s", "value": "v"}).status_code == 202
    yield info
    # The state is valid after the fuzzing, and the provider still serves it.
    functions = s.get(f"{info.url}/system/functions").json()
    for fn in functions:
        assert NAME_RE.match(fn["name"]) and fn["image"].strip()
        ann = fn["annotations"]
        assert 1 <= int(ann["fastgshare/gpu_sm_partition"]) <= 100
        assert 0 < float(ann["fastgshare/gpu_quota_request"]) <= float(ann["fastgshare/gpu_quota_limit"]) <= 1
    assert s.get(f"{info.url}/healthz").status_code == 200
    platform.stop()


schema = schemathesis.openapi.from_path(SPEC)


@schema.parametrize()
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_running_provider_conforms(case: schemathesis.Case, live: PlatformInfo) -> None:
    if case.path.startswith("/system/logs"):
        case.query = {**(case.query or {}), "follow": "false"}  # a followed log never ends
    case.call_and_validate(base_url=live.url, auth=live.auth, checks=CHECKS, timeout=30)
