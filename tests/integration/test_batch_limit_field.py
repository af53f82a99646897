"""A configuration group's ``batchLimit`` (the scheduler's batch lever) through the provider: taken,
validated (400 naming the field and its range), reported, kept in local mode's desired state in
Redis across a provider restart (on Kubernetes: test_batch_limit_k8s.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fastgshare.resources import GpuShare, ScaleBounds
from fastgshare.specs import FunctionSpec, ReplicaConfig
from gateway_plugin.local_backend import LocalBackend
from tests.integration.provider_fixtures import *  # noqa: F403
from tests.integration.provider_fixtures import AUTH

HANDLER = Path(__file__).parent / "handlers" / "slow"
SHARE = {"fastgshare/gpu_sm_partition": "50", "fastgshare/gpu_quota_request": "1",
         "fastgshare/gpu_quota_limit": "1"}


def _body(**extra):
    return {"configurations": [{"configId": "g1", "replicas": 1, "share": SHARE, "batch": 1, **extra}]}


@pytest.fixture
def deployed(client):
    assert client.post("/system/functions", json={"service": "f", "image": "img"},
                       headers=AUTH).status_code == 202
    return client


def test_batch_limit_is_taken_and_reported(deployed):
    assert deployed.put("/system/fastgshare/configurations/f", json=_body(batchLimit=8),
                        headers=AUTH).status_code == 202
    (fn,) = deployed.get("/system/fastgshare/replicas", headers=AUTH).get_json()
    (cfg,) = fn["configurations"]
    assert (cfg["configId"], cfg["batch"], cfg["batchLimit"]) == ("g1", 1, 8)
    # absent or null: none (the group runs at its own batch)
    for body in (_body(), _body(batchLimit=None)):
        assert deployed.put("/system/fastgshare/configurations/f", json=body, headers=AUTH).status_code == 202
        (fn,) = deployed.get("/system/fastgshare/replicas", headers=AUTH).get_json()
        assert fn["configurations"][0]["batchLimit"] is None


@pytest.mark.parametrize("value", [0, 257, -1, "8", 2.5, True])
def test_a_bad_batch_limit_is_refused_naming_the_field_and_its_range(deployed, value):
    assert deployed.put("/system/fastgshare/configurations/f", json=_body(batchLimit=3),
                        headers=AUTH).status_code == 202
    resp = deployed.put("/system/fastgshare/configurations/f", json=_body(batchLimit=value), headers=AUTH)
    text = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "configurations[0].batchLimit" in text and "1..256" in text, text
    (fn,) = deployed.get("/system/fastgshare/replicas", headers=AUTH).get_json()
    assert fn["configurations"][0]["batchLimit"] == 3  # nothing changed


def test_local_desired_state_keeps_it_across_a_provider_restart(redis_client, state_dir):
    first = LocalBackend(redis_client, state_dir)
    first.register_image("t/img", HANDLER)
    first.deploy(FunctionSpec("f", "t/img", scale=ScaleBounds(0, 1)))
    group = ReplicaConfig("g1", GpuShare(sm_pct=50), 0, batch=2, batch_limit=8)
    first.apply_configurations("openfaas-fn", "f", [group])
    first.close()
    again = LocalBackend(redis_client, state_dir)  # a new provider process reads Redis
    try:
        (cfg,) = again.status("openfaas-fn", "f").configs
        assert (cfg.batch, cfg.batch_limit, cfg.run_batch) == (2, 8, 8)
        again.apply_configurations("openfaas-fn", "f", [replace(group, batch_limit=None)])
        (cfg,) = again.status("openfaas-fn", "f").configs
        assert (cfg.batch_limit, cfg.run_batch) == (None, 2)
    finally:
        again.remove("openfaas-fn", "f")
        again.close()
