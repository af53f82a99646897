"""Parsing and making the faas-provider wire types (pure, table-driven)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from fastgshare.resources import ScaleBounds
from fastgshare.specs import FunctionSpec
from gateway_plugin import types
from gateway_plugin.backend import FunctionState, LogLine
from gateway_plugin.errors import Invalid
from gateway_plugin.settings import ProviderSettings, provider_settings_from_env

BASE = {"service": "echo", "image": "echo:latest"}


def spec_of(**extra: object) -> FunctionSpec:
    return types.as_function_spec({**BASE, **extra})


@pytest.mark.parametrize("name", ["a", "echo", "a-b", "a1", "1a", "x" * 63, "nodeinfo-2"])
def test_valid_names(name: str) -> None:
    assert types.validate_name(name) == name


@pytest.mark.parametrize("name", [
    "", None, 5, "A", "a_b", "-a", "a-", "a.b", "x" * 64, "é", "a b", "a/b",
])
def test_invalid_names_name_the_field(name: object) -> None:
    with pytest.raises(Invalid, match="service"):
        types.validate_name(name)


@pytest.mark.parametrize("body, field", [
    ({"image": "x"}, "service"),
    ({"service": "Bad_Name", "image": "x"}, "service"),
    ({"service": "ok"}, "image"),
    ({**BASE, "image": " "}, "image"),
    ({**BASE, "namespace": "Bad"}, "namespace"),
    ({**BASE, "namespace": 3}, "namespace"),
    ({**BASE, "envProcess": 1}, "envProcess"),
    ({**BASE, "envVars": []}, "envVars"),
    ({**BASE, "envVars": {"A": 1}}, "envVars.A"),
    ({**BASE, "labels": {"a": True}}, "labels.a"),
    ({**BASE, "annotations": "x"}, "annotations"),
    ({**BASE, "constraints": "x"}, "constraints"),
    ({**BASE, "secrets": [1]}, r"secrets\[0\]"),
    ({**BASE, "secrets": ["Bad_Secret"]}, r"secrets\[0\]"),
    ({**BASE, "limits": {"memory": "lots"}}, "limits.memory"),
    ({**BASE, "requests": {"cpu": "1 core"}}, "requests.cpu"),
    ({**BASE, "limits": []}, "limits"),
    ({**BASE, "readOnlyRootFilesystem": "yes"}, "readOnlyRootFilesystem"),
    ({**BASE, "annotations": {"fastgshare/gpu_sm_partition": "0"}}, "fastgshare/gpu_sm_partition"),
    ({**BASE, "annotations": {"fastgshare/gpu_sm_partition": "101"}}, "1..100"),
    ({**BASE, "labels": {"fastgshare/gpu_quota_limit": "1.5"}}, "fastgshare/gpu_quota_limit"),
    ({**BASE, "annotations": {"fastgshare/gpu_quota_request": "0.8",
                              "fastgshare/gpu_quota_limit": "0.5"}}, "fastgshare/gpu_quota_request"),
    ({**BASE, "annotations": {"fastgshare/gpu_mem": "-1"}}, "fastgshare/gpu_mem"),
    ({**BASE, "annotations": {"fastgshare/slo_ms": "0"}}, "fastgshare/slo_ms"),
    ({**BASE, "labels": {"com.openfaas.scale.min": "5", "com.openfaas.scale.max": "2"}},
     "com.openfaas.scale.min"),
    ({**BASE, "labels": {"com.openfaas.scale.max": "0"}}, "com.openfaas.scale.max"),
    ({**BASE, "labels": {"com.openfaas.scale.min": "one"}}, "com.openfaas.scale.min"),
])
def test_deployment_refusals_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(Invalid, match=field):
        types.as_function_spec(body)


def test_deployment_parses_every_field() -> None:
    spec = types.as_function_spec({
        **BASE, "namespace": "", "envProcess": "python index.py", "envVars": {"A": "1"},
        "constraints": ["node=a"], "secrets": ["api-key"], "labels": {"com.openfaas.scale.min": "0"},
        "annotations": {"fastgshare/gpu_sm_partition": "24", "fastgshare/gpu_quota_limit": "0.6",
                        "fastgshare/gpu_quota_request": "0.4", "fastgshare/gpu_mem": "1Gi"},
        "limits": {"memory": "128Mi", "cpu": ""}, "requests": {"cpu": "500m"},
        "readOnlyRootFilesystem": True, "unknownField": {"ignored": True},
    })
    assert spec.namespace == "openfaas-fn"
    assert spec.env_vars == {"A": "1"} and spec.secrets == ("api-key",)
    assert spec.limits == {"memory": "128Mi"} and spec.requests == {"cpu": "500m"}
    assert spec.share.sm_pct == 24 and spec.share.quota_request_frac == 0.4
    assert spec.share.mem_bytes == 2**30
    assert spec.scale == ScaleBounds(0, 20)
    assert spec.read_only_root_filesystem


def test_nulls_read_as_absent_like_go() -> None:
    spec = types.as_function_spec({**BASE, "envVars": None, "labels": None, "secrets": None,
                                   "namespace": None, "readOnlyRootFilesystem": None})
    assert spec.env_vars == {} and spec.secrets == () and spec.namespace == "openfaas-fn"


@pytest.mark.parametrize("body", [b"", b"{", b"[1]", b"null", b"\xff", b'"x"'])
def test_body_must_be_a_json_object(body: bytes) -> None:
    with pytest.raises(Invalid, match="Thing"):
        types.parse_json_object(body, "Thing")


@pytest.mark.parametrize("body, want", [
    ({"serviceName": "x", "replicas": 3}, 3), ({"replicas": 0}, 0), ({"replicas": 2.0}, 2),
])
def test_scale_replicas(body: dict[str, object], want: int) -> None:
    assert types.as_scale_replicas(body) == want


@pytest.mark.parametrize("body", [
    {}, {"replicas": None}, {"replicas": -1}, {"replicas": 1.5}, {"replicas": "3"},
    {"replicas": True}, {"replicas": 2**64}, {"replicas": 1, "serviceName": 3},
])
def test_scale_refusals(body: dict[str, object]) -> None:
    with pytest.raises(Invalid, match="replicas|serviceName"):
        types.as_scale_replicas(body)


@pytest.mark.parametrize("requested, bounds, want", [
    (3, ScaleBounds(1, 5), 3), (9, ScaleBounds(1, 5), 5), (0, ScaleBounds(1, 5), 0),
    (1, ScaleBounds(2, 5), 1),
])
def test_clamp_only_to_max(requested: int, bounds: ScaleBounds, want: int) -> None:
    assert types.clamp_replicas(requested, bounds) == want


def test_secret_value_and_raw_value() -> None:
    raw = bytes(range(256))
    s = types.as_secret({"name": "k", "rawValue": base64.b64encode(raw).decode(), "value": "v"}, "ns")
    assert s.raw == raw and s.namespace == "ns"
    assert types.as_secret({"name": "a.b-c", "value": "v"}, "ns").raw == b"v"
    assert types.as_secret({"name": "empty"}, "ns").raw == b""


@pytest.mark.parametrize("body, field", [
    ({}, "name"), ({"name": "UPPER"}, "name"), ({"name": "k", "rawValue": "%%%"}, "rawValue"),
    ({"name": "k", "value": 1}, "value"), ({"name": "x" * 254}, "name"),
])
def test_secret_refusals(body: dict[str, object], field: str) -> None:
    with pytest.raises(Invalid, match=field):
        types.as_secret(body, "ns")


@pytest.mark.parametrize("args, want", [
    ({"name": "fn"}, types.LogQuery("fn")),
    ({"name": "fn", "namespace": "", "tail": "-1", "follow": "junk"}, types.LogQuery("fn")),
    ({"name": "fn", "tail": "0", "follow": "1"}, types.LogQuery("fn", follow=True)),
    ({"name": "fn", "tail": "5", "follow": "true", "instance": "fn-1"},
     types.LogQuery("fn", instance="fn-1", tail=5, follow=True)),
    ({"name": "fn", "since": "2024-05-01T12:00:00+02:00"},
     types.LogQuery("fn", since=datetime(2024, 5, 1, 10, 0, tzinfo=UTC))),
])
def test_log_query(args: dict[str, str], want: types.LogQuery) -> None:
    assert types.as_log_query(args) == want


@pytest.mark.parametrize("args, field", [
    ({}, "name"), ({"name": "Fn"}, "name"), ({"name": "fn", "tail": "x"}, "tail"),
    ({"name": "fn", "since": "yesterday"}, "since"), ({"name": "fn", "since": "2024-05-01"}, "since"),
    ({"name": "fn", "since": "2024-05-01T10:00:00"}, "since"),
])
def test_log_query_refusals(args: dict[str, str], field: str) -> None:
    with pytest.raises(Invalid, match=field):
        types.as_log_query(args)


@pytest.mark.parametrize("ref, want", [
    ("echo", ("echo", "openfaas-fn")), ("echo.dev", ("echo", "dev")), ("echo.", ("echo", "openfaas-fn")),
])
def test_split_function_ref(ref: str, want: tuple[str, str]) -> None:
    assert types.split_function_ref(ref) == want


@pytest.mark.parametrize("ref", ["Echo", "echo.Dev", "echo.a.b", ".dev"])
def test_split_function_ref_refusals(ref: str) -> None:
    with pytest.raises(Invalid):
        types.split_function_ref(ref)


@pytest.mark.parametrize("ts, want", [
    (datetime(2024, 5, 1, 10, 0, tzinfo=UTC), "2024-05-01T10:00:00Z"),
    (datetime(2024, 5, 1, 10, 0, 0, 120000, tzinfo=UTC), "2024-05-01T10:00:00.12Z"),
    (datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))), "2024-05-01T10:00:00Z"),
    (datetime(2024, 5, 1, 10, 0), "2024-05-01T10:00:00Z"),
])
def test_rfc3339_like_go(ts: datetime, want: str) -> None:
    assert types.rfc3339(ts) == want


def test_status_json_fields_and_omitempty() -> None:
    spec = spec_of(annotations={"fastgshare/gpu_sm_partition": "50", "team": "a"})
    created = datetime(2024, 5, 1, tzinfo=UTC)
    out = types.make_status_json(FunctionState(spec, 2, 1, created), 7.0)
    assert out == {
        "name": "echo", "image": "echo:latest", "namespace": "openfaas-fn", "labels": {},
        "annotations": {"team": "a", "fastgshare/gpu_sm_partition": "50",
                        "fastgshare/gpu_quota_request": "1", "fastgshare/gpu_quota_limit": "1"},
        "invocationCount": 7, "replicas": 2, "availableReplicas": 1,
        "createdAt": "2024-05-01T00:00:00Z",
    }
    full = spec_of(envProcess="p", envVars={"A": "1"}, constraints=["c"], secrets=["s"],
                   limits={"memory": "1Gi"}, requests={"cpu": "1"}, readOnlyRootFilesystem=True)
    out = types.make_status_json(FunctionState(full, 0, 0, created), 0.5)
    for key in ("envProcess", "envVars", "constraints", "secrets", "limits", "requests",
                "readOnlyRootFilesystem"):
        assert key in out
    assert out["replicas"] == 0 and out["invocationCount"] == 0.5
    assert "fastgshareInvocationsStarted" not in out
    started = types.make_status_json(FunctionState(spec, 2, 1, created), 7.0, 9.0)
    assert started["fastgshareInvocationsStarted"] == 9 and started["invocationCount"] == 7


def test_log_and_info_json() -> None:
    line = LogLine("fn", "openfaas-fn", "fn-1", datetime(2024, 5, 1, tzinfo=UTC), "hello")
    assert types.make_log_json(line) == {"name": "fn", "namespace": "openfaas-fn", "instance": "fn-1",
                                         "timestamp": "2024-05-01T00:00:00Z", "text": "hello"}
    assert types.make_info_json("p", "local", "1", "abc") == {
        "provider": "p", "version": {"sha": "abc", "release": "1"}, "orchestration": "local"}


def test_settings_from_env() -> None:
    s = provider_settings_from_env({"FASTGSHARE_STATE_DIR": "/tmp/st", "basic_auth": "false",
                                    "REDIS_URL": "redis://x:1/0", "FASTGSHARE_BACKEND": "Kubernetes"})
    assert s.basic_auth is False and s.redis_url == "redis://x:1/0" and s.backend_kind == "kubernetes"
    assert str(s.secrets_dir) == "/tmp/st/secrets"
    s = provider_settings_from_env({"secret_mount_path": "/run/secrets", "FASTGSHARE_INVOKE_TIMEOUT_S": "3"})
    assert s.basic_auth is True and str(s.secrets_dir) == "/run/secrets" and s.invoke_timeout_s == 3.0
    assert ProviderSettings().scale_from_zero_timeout_s > 0
