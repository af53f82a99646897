"""Bad input through the provider API (issue 21): every refused deploy answers 4xx naming the field
and stores nothing; hostile annotation, limits and ``envVars`` values never get a 5xx; a Redis
outage anywhere behind a control-plane route is 503 with ``Retry-After`` naming the state store."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.fakes import FakeBackend
from tests.integration.provider_fixtures import *  # noqa: F403
from tests.integration.provider_fixtures import AUTH

FN = {"service": "bad", "image": "echo:latest"}


@pytest.mark.parametrize(("change", "field"), [
    ({"annotations": {"fastgshare/gpu_mem": "9" * 400}}, "fastgshare/gpu_mem"),
    ({"annotations": {"fastgshare/gpu_mem": "1000000000000000000000000000000Ti"}}, "fastgshare/gpu_mem"),
    ({"annotations": {"fastgshare/gpu_mem": "-5Gi"}}, "fastgshare/gpu_mem"),
    ({"labels": {"fastgshare/gpu_mem": "1e400"}}, "fastgshare/gpu_mem"),
    ({"annotations": {"fastgshare/slo_ms": "1e300"}}, "fastgshare/slo_ms"),
    ({"annotations": {"fastgshare/gpu_quota_limit": "NaN"}}, "fastgshare/gpu_quota_limit"),
    ({"annotations": {"fastgshare/gpu_sm_partition": "５０"}}, "fastgshare/gpu_sm_partition"),
    ({"annotations": {"com.openfaas.scale.max": "1e308"}}, "com.openfaas.scale.max"),
    ({"limits": {"memory": "1e400"}}, "limits.memory"),
    ({"limits": {"memory": "99999999999999Ei"}}, "limits.memory"),
    ({"requests": {"cpu": "1e9"}}, "requests.cpu"),
    ({"envVars": {"FASTGSHARE_QUEUE_MAX": "abc"}}, "envVars.FASTGSHARE_QUEUE_MAX"),
    ({"envVars": {"FASTGSHARE_EXEC_TIMEOUT_S": "inf"}}, "envVars.FASTGSHARE_EXEC_TIMEOUT_S"),
    ({"envVars": {"FASTGSHARE_BATCH": "-3"}}, "envVars.FASTGSHARE_BATCH"),
])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_each_bad_input_is_400_naming_the_field_and_stores_nothing(
        client: FlaskClient, backend: FakeBackend, method: str, change: dict[str, Any], field: str) -> None:
    if method == "PUT":  # an update of a deployed function is refused alike and leaves it as it was
        assert client.post("/system/functions", json=FN, headers=AUTH).status_code == 202
    before = backend.snapshot()
    resp = client.open("/system/functions", method=method, json={**FN, **change}, headers=AUTH)
    assert resp.status_code == 400, resp.text
    assert resp.text.startswith(field) or f"invalid {field}" in resp.text, resp.text
    assert len(resp.text) < 400
    assert backend.snapshot() == before


ANNOTATION_KEYS = ["fastgshare/gpu_sm_partition", "fastgshare/gpu_quota_request",
                   "fastgshare/gpu_quota_limit", "fastgshare/gpu_mem", "fastgshare/slo_ms",
                   "fastgshare/model", "com.openfaas.scale.min", "com.openfaas.scale.max"]
HOSTILE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["9" * 400, "-1", "nan", "-inf", "1e999", "1Ei", "0.0000001", "12Gi", "٣", "１"]),
    st.builds(lambda n, u: f"{n}{u}", st.integers(min_value=-(10**25), max_value=10**25),
              st.sampled_from(["", "Ki", "Mi", "Gi", "Ti", "m", "k", "e9", "E"])),
)


@hypothesis_settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(ANNOTATION_KEYS), value=HOSTILE, where=st.sampled_from(["labels", "annotations"]),
       limit=HOSTILE, env=HOSTILE)
def test_hostile_values_never_get_a_server_error(client: FlaskClient, backend: FakeBackend, key: str,
                                                 value: str, where: str, limit: str, env: str) -> None:
    body = {**FN, where: {key: value}, "limits": {"memory": limit},
            "envVars": {"FASTGSHARE_QUEUE_MAX": env}}
    before = backend.snapshot()
    resp = client.post("/system/functions", data=json.dumps(body), headers=AUTH)
    assert resp.status_code in (202, 400), resp.text
    if resp.status_code == 400:
        assert backend.snapshot() == before
    else:
        client.delete("/system/functions", json={"functionName": "bad"}, headers=AUTH)


class _RedisDownBackend(FakeBackend):
    def list(self, namespace: str) -> Any:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as e:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379.") from e


def test_a_redis_outage_behind_a_route_is_503_with_retry_after(settings: Any) -> None:
    from gateway_plugin.app import create_app

    app = create_app(_RedisDownBackend(), settings)
    resp = app.test_client().get("/system/functions", headers=AUTH)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    assert "state store (Redis)" in resp.text
