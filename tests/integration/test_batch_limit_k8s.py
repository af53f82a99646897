"""A configuration group's ``batchLimit`` on Kubernetes: recorded on the group's Deployment (read
back from it), not on its pod template, so a change starts no rollout; no pod takes it
(docs/kubernetes.md)."""

from __future__ import annotations

from dataclasses import replace

from kubernetes import client

from fastgshare.resources import GpuShare
from fastgshare.specs import Placement, ReplicaConfig
from gateway_plugin import k8s_specs as specs
from gateway_plugin.kubernetes_backend import KubernetesBackend
from tests.integration.test_kubernetes_backend import NS, api, backend, clock, fake, make_spec, raw  # noqa: F401


def test_kubernetes_records_it_on_the_deployment_without_a_rollout(backend: KubernetesBackend,  # noqa: F811
                                                                    api: client.ApiClient) -> None:  # noqa: F811
    backend.deploy(make_spec())
    group = ReplicaConfig("sm50", GpuShare(sm_pct=50), 1, Placement("node-b", "GPU-9"), batch=2)
    backend.apply_configurations(NS, "resnet", [group])
    before = raw(api, client.AppsV1Api(api).read_namespaced_deployment, "resnet-sm50", NS)
    backend.apply_configurations(NS, "resnet", [replace(group, batch_limit=8)])
    dep = raw(api, client.AppsV1Api(api).read_namespaced_deployment, "resnet-sm50", NS)
    assert dep["metadata"]["annotations"][specs.BATCH_LIMIT_KEY] == "8"
    assert dep["spec"]["template"] == before["spec"]["template"]  # the pods are left as they are
    (cfg,) = backend.status(NS, "resnet").configs
    assert (cfg.batch, cfg.batch_limit) == (2, 8)
    backend.apply_configurations(NS, "resnet", [group])
    dep = raw(api, client.AppsV1Api(api).read_namespaced_deployment, "resnet-sm50", NS)
    assert specs.BATCH_LIMIT_KEY not in dep["metadata"]["annotations"]
    (cfg,) = backend.status(NS, "resnet").configs
    assert cfg.batch_limit is None
