"""On Kubernetes, a function none of whose pods can start (each restarted 3 times without becoming
ready, or waiting on an image that cannot be pulled) is refused at once by ``wait_ready`` with the
container's last error (503 through the proxy), not after the scale-from-zero wait (issue 21).
Against kmock's fake API server; the test writes the pods a kubelet would."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from gateway_plugin import k8s_specs as specs
from gateway_plugin.errors import FunctionCannotStart
from gateway_plugin.kubernetes_backend import KubernetesBackend
from tests.integration.test_kubernetes_backend import (  # noqa: F401  (fixtures)
    NS,
    api,
    backend,
    clock,
    fake,
    make_spec,
)


def _pod(name: str, i: int, container_status: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-pod-{i}", "namespace": NS,
                         "labels": {specs.FUNCTION_LABEL: name, specs.CONFIG_LABEL: ""}},
            "spec": {"containers": [{"name": "function", "image": "x"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}],
                       "containerStatuses": [{"name": "function", "ready": False, "image": "x",
                                              "imageID": "", **container_status}]}}


CRASH_LOOP = {"restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
              "lastState": {"terminated": {"reason": "Error", "exitCode": 2,
                                           "message": "bad sidecar environment: FASTGSHARE_X"}}}


def test_crash_looping_pods_are_refused_at_once_with_the_reason(
        backend: KubernetesBackend, api: client.ApiClient) -> None:  # noqa: F811 (fixtures)
    backend.deploy(make_spec())
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(NS, _pod("resnet", 0, CRASH_LOOP))
    core.create_namespaced_pod(NS, _pod("resnet", 1, {"restartCount": 1, "state": {}}))
    assert backend.wait_ready(NS, "resnet", timeout_s=1.0) is False  # one may still come up
    core.delete_namespaced_pod("resnet-pod-1", NS)
    core.create_namespaced_pod(NS, _pod("resnet", 2, {
        "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff",
                                                 "message": "manifest unknown"}}}))
    with pytest.raises(FunctionCannotStart) as err:
        backend.wait_ready(NS, "resnet", timeout_s=60.0)
    assert "bad sidecar environment" in str(err.value) and "CrashLoopBackOff" in str(err.value)


def test_a_ready_pod_means_it_can_start() -> None:
    ready = _pod("f", 0, CRASH_LOOP)
    ready["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    assert specs.cannot_start_reason([_pod("f", 1, CRASH_LOOP), ready]) is None
    assert specs.cannot_start_reason([]) is None
