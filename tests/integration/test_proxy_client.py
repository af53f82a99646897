"""The invoke path's own HTTP client against replicas that close kept-alive connections: a socket
the replica closed while idle is not reused (no 502 for the next request), and an answer with
``Connection: close`` is not kept."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from fastgshare.specs import FunctionSpec
from gateway_plugin.app import create_app
from gateway_plugin.settings import ProviderSettings
from tests.fakes import ClosingReplica, FakeBackend


@pytest.fixture(params=[0.05, None], ids=["idle-close", "connection-close"])
def replica(request: pytest.FixtureRequest) -> Iterator[ClosingReplica]:
    rep = ClosingReplica(request.param)
    yield rep
    rep.close()


def test_a_connection_the_replica_closed_is_not_reused(replica: ClosingReplica) -> None:
    backend = FakeBackend(replica_url=replica.url)
    backend.deploy(FunctionSpec("echo", "echo"))
    app = create_app(backend, ProviderSettings(basic_auth=False), registry=CollectorRegistry(),
                     records=None)
    client = app.test_client()
    for _ in range(3):
        resp = client.post("/function/echo", data=b"hi")
        assert (resp.status_code, resp.data) == (200, b"ok")
        time.sleep(0.2)  # the replica closes its side meanwhile
    assert replica.connections == 3
