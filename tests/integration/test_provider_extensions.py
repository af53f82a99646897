"""FaST-GShare's own /system/fastgshare/* routes: replica placement and scheduler groups."""

from __future__ import annotations

import pytest

from fastgshare.resources import GpuShare
from tests.integration.provider_fixtures import *  # noqa: F403
from tests.integration.provider_fixtures import AUTH


@pytest.fixture
def deployed(client):
    assert client.post("/system/functions", json={"service": "f", "image": "img", "annotations": {
        "fastgshare/gpu_sm_partition": "50"}}, headers=AUTH).status_code == 202
    return client


def test_replicas_shows_share_and_groups(deployed, backend):
    body = {"configurations": [{"configId": "c1", "replicas": 2, "share": {
        "fastgshare/gpu_sm_partition": "24", "fastgshare/gpu_quota_request": "0.2",
        "fastgshare/gpu_quota_limit": "0.4"}, "gpuUuid": "GPU-1", "batch": 4}]}
    assert deployed.put("/system/fastgshare/configurations/f", json=body, headers=AUTH).status_code == 202
    (cfg,) = backend.status("openfaas-fn", "f").configs
    assert cfg.config_id == "c1" and cfg.replicas == 2 and cfg.placement.gpu_uuid == "GPU-1"
    assert cfg.share == GpuShare(24, 0.2, 0.4) and cfg.batch == 4

    resp = deployed.get("/system/fastgshare/replicas", headers=AUTH)
    assert resp.status_code == 200
    (fn,) = resp.get_json()
    assert fn["name"] == "f" and fn["share"]["fastgshare/gpu_sm_partition"] == "50"
    assert fn["configurations"][0]["share"]["fastgshare/gpu_quota_limit"] == "0.4"
    assert fn["configurations"][0]["batch"] == 4


@pytest.mark.parametrize(("body", "field"), [
    ({}, "configurations"),
    ({"configurations": [{"configId": "Bad", "replicas": 1}]}, "configId"),
    ({"configurations": [{"configId": "a", "replicas": -1}]}, "replicas"),
    ({"configurations": [{"configId": "a", "replicas": 1,
                          "share": {"fastgshare/gpu_sm_partition": "300"}}]}, "gpu_sm_partition"),
    ({"configurations": [{"configId": "a", "replicas": 1}, {"configId": "a", "replicas": 1}]}, "unique"),
    ({"configurations": [{"configId": "a", "replicas": 1, "batch": 0}]}, "batch"),
    ({"configurations": [{"configId": "a", "replicas": 1, "batch": "4"}]}, "batch"),
])
def test_bad_configurations_are_refused_and_change_nothing(deployed, backend, body, field):
    resp = deployed.put("/system/fastgshare/configurations/f", json=body, headers=AUTH)
    assert resp.status_code == 400 and field in resp.get_data(as_text=True)
    assert backend.status("openfaas-fn", "f").configs == ()


def test_unknown_function_and_auth(deployed):
    body = {"configurations": []}
    assert deployed.put("/system/fastgshare/configurations/nope", json=body, headers=AUTH).status_code == 404
    assert deployed.get("/system/fastgshare/replicas").status_code == 401
