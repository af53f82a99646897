"""Opt-in: the Kubernetes backend against a real cluster.

Runs only when ``FASTGSHARE_E2E_KUBECONFIG`` names a kubeconfig (a plain ``KUBECONFIG`` is not
enough, so that a developer's cluster is never touched by accident). It creates a throw-away
namespace labelled ``openfaas=1``, deploys a function whose image serves ``/_/health`` on 8080
(default: a stock HTTP echo server, ``FASTGSHARE_E2E_IMAGE`` overrides; the sidecar command is
replaced by the image's own), waits for a ready endpoint, scales, reads logs and removes it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from fastgshare.specs import FunctionSpec
from gateway_plugin.backend import SecretValue
from gateway_plugin.k8s_specs import PodSettings

pytestmark = pytest.mark.e2e

KUBECONFIG = os.environ.get("FASTGSHARE_E2E_KUBECONFIG", "")
if not KUBECONFIG:
    pytest.skip("no cluster: set FASTGSHARE_E2E_KUBECONFIG to a kubeconfig to run the Kubernetes "
                "e2e tests", allow_module_level=True)

from kubernetes import client, config  # noqa: E402  (only once a cluster is named)

from gateway_plugin.kubernetes_backend import (  # noqa: E402
    KubernetesBackend,
    KubernetesSettings,
    make_kubernetes_backend,
)

IMAGE = os.environ.get("FASTGSHARE_E2E_IMAGE", "registry.k8s.io/e2e-test-images/agnhost:2.47")
COMMAND = tuple(os.environ.get(
    "FASTGSHARE_E2E_COMMAND", "/agnhost netexec --http-port=8080").split())


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"fastgshare-e2e-{uuid.uuid4().hex[:6]}"
    api = config.new_client_from_config(config_file=KUBECONFIG)
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name, "labels": {"openfaas": "1"}}})
    yield name
    core.delete_namespace(name)
    api.close()


@pytest.fixture
def backend(namespace: str) -> Iterator[KubernetesBackend]:
    b = make_kubernetes_backend(KubernetesSettings(
        # No Redis in the throw-away namespace: no sidecar Secret to take its password from.
        kubeconfig=KUBECONFIG, pod=PodSettings(sidecar_command=COMMAND, redis_secret="")))
    yield b
    b.close()


def test_function_lifecycle(backend: KubernetesBackend, namespace: str) -> None:
    # agnhost netexec answers 200 on any path, so /_/health passes without the sidecar.
    backend.create_secret(SecretValue("token", namespace, b"t0ken"))
    spec = FunctionSpec(name="echo", image=IMAGE, namespace=namespace, secrets=("token",))
    backend.deploy(spec)
    assert backend.wait_ready(namespace, "echo", timeout_s=180)
    assert backend.resolve(namespace, "echo").endswith(":8080")
    backend.scale(namespace, "echo", 2)
    state = backend.status(namespace, "echo")
    assert state.replicas == 2 and state.spec.image == IMAGE
    list(backend.logs(namespace, "echo", since=None, tail=10, follow=False))
    backend.remove(namespace, "echo")
    backend.remove_secret(namespace, "token")
