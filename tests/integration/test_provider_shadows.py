"""The profiler's shadow functions, profile-table invalidation and the image registry route.

The provider over the in-memory backend, with a real Redis for the records (profile tables, image
registry): what a user sees while a function is profiled, what removing it takes with it, and when
a redeploy drops its tables.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from fast_profiler import store
from fast_profiler.shadow import PROFILE_OF_LABEL, code_identity, shadow_name
from fast_profiler.store import ProfileState
from fastgshare import keys
from fastgshare.handler_archive import folder_digest, pack
from gateway_plugin.app import create_app
from gateway_plugin.records import PlatformRecords
from gateway_plugin.settings import ProviderSettings
from tests.fakes import FakeBackend
from tests.integration.provider_fixtures import *  # noqa: F403
from tests.integration.provider_fixtures import AUTH

NS = "openfaas-fn"
DEVICE = "cpu-2c"


@pytest.fixture
def records(redis_client: redis.Redis) -> PlatformRecords:
    return PlatformRecords(redis_client)


@pytest.fixture
def rclient(backend: FakeBackend, settings: ProviderSettings, records: PlatformRecords) -> FlaskClient:
    app: Flask = create_app(backend, settings, records=records)
    return app.test_client()


def _deploy(c: FlaskClient, name: str, image: str = "img", method: str = "post", **extra: object) -> int:
    body = {"service": name, "image": image, **extra}
    return getattr(c, method)("/system/functions", json=body, headers=AUTH).status_code


def _shadow_body(of: str, image: str = "img") -> dict[str, object]:
    return {"service": shadow_name(of), "image": image,
            "labels": {PROFILE_OF_LABEL: of, "com.openfaas.scale.max": "1"},
            "annotations": {"fastgshare/gpu_sm_partition": "24"}}


def _names(c: FlaskClient) -> list[str]:
    resp = c.get("/system/functions", headers=AUTH)
    assert resp.status_code == 200
    return sorted(f["name"] for f in resp.get_json())


# ---- shadows --------------------------------------------------------------------------------

def test_a_shadow_is_hidden_from_the_contract_and_listed_by_the_extension(client, backend):
    assert _deploy(client, "bert") == 202
    assert client.post("/system/functions", json=_shadow_body("bert"), headers=AUTH).status_code == 202
    assert backend.status(NS, "bert-profile").spec.labels[PROFILE_OF_LABEL] == "bert"

    assert _names(client) == ["bert"]
    assert client.get("/system/function/bert-profile", headers=AUTH).status_code == 404
    assert client.get("/system/function/bert", headers=AUTH).status_code == 200
    scale = client.post("/system/scale-function/bert-profile", json={"replicas": 3}, headers=AUTH)
    assert scale.status_code == 404
    assert client.get("/system/namespaces", headers=AUTH).get_json() == [NS]
    # The profiler redeploys its shadow per configuration (PUT) and may invoke it.
    assert client.put("/system/functions", json=_shadow_body("bert"), headers=AUTH).status_code == 202
    assert client.post("/function/bert-profile", data=b"{}").status_code == 200

    reps = {f["name"]: f for f in client.get("/system/fastgshare/replicas", headers=AUTH).get_json()}
    assert reps["bert-profile"]["profileOf"] == "bert" and reps["bert"]["profileOf"] is None


def test_removing_a_function_removes_its_shadow_and_no_other(client, backend):
    for name in ("bert", "resnet"):
        assert _deploy(client, name) == 202
        assert client.post("/system/functions", json=_shadow_body(name), headers=AUTH).status_code == 202
    resp = client.delete("/system/functions", json={"functionName": "bert"}, headers=AUTH)
    assert resp.status_code == 202
    left = sorted(name for (_, name) in backend.snapshot()["functions"])  # type: ignore[union-attr]
    assert left == ["resnet", "resnet-profile"]


def test_a_shadow_left_without_its_function_goes_when_the_function_is_removed(client, backend):
    assert _deploy(client, "bert") == 202
    assert client.post("/system/functions", json=_shadow_body("bert"), headers=AUTH).status_code == 202
    backend.remove(NS, "bert")  # as if the provider had crashed between the two removals
    resp = client.delete("/system/functions", json={"functionName": "bert"}, headers=AUTH)
    assert resp.status_code == 202
    assert backend.snapshot()["functions"] == {}
    resp = client.delete("/system/functions", json={"functionName": "bert"}, headers=AUTH)
    assert resp.status_code == 404


def test_a_shadow_needs_its_function(client, backend):
    resp = client.post("/system/functions", json=_shadow_body("gone"), headers=AUTH)
    assert resp.status_code == 400 and f"labels.{PROFILE_OF_LABEL}" in resp.get_data(as_text=True)
    assert backend.snapshot()["functions"] == {}
    # A shadow cannot profile a shadow either.
    assert _deploy(client, "bert") == 202
    assert client.post("/system/functions", json=_shadow_body("bert"), headers=AUTH).status_code == 202
    resp = client.post("/system/functions", json=_shadow_body("bert-profile"), headers=AUTH)
    assert resp.status_code == 400


def test_user_functions_and_shadows_never_replace_each_other(client, backend):
    assert _deploy(client, "bert") == 202
    assert client.post("/system/functions", json=_shadow_body("bert"), headers=AUTH).status_code == 202
    for method in ("post", "put"):
        resp = getattr(client, method)("/system/functions", json={"service": "bert-profile", "image": "x"},
                                       headers=AUTH)
        assert resp.status_code == 409, method
        assert "profiling run of 'bert'" in resp.get_data(as_text=True)
    assert backend.status(NS, "bert-profile").spec.image == "img"
    # The other way round: a user's own function named like a shadow stays the user's.
    assert _deploy(client, "other") == 202
    assert _deploy(client, "other-profile", image="mine") == 202
    resp = client.put("/system/functions", json=_shadow_body("other"), headers=AUTH)
    assert resp.status_code == 409 and "a user's function" in resp.get_data(as_text=True)
    assert backend.status(NS, "other-profile").spec.image == "mine"
    assert _names(client) == ["bert", "other", "other-profile"]


# ---- profile tables and redeploys -----------------------------------------------------------

def _store_table(client: redis.Redis, name: str, identity: str | None) -> None:
    """A stored table and its detail, as the profiler writes them (only their presence matters)."""
    client.set(keys.profile(name, DEVICE), json.dumps({"version": 1, "function": name}))
    detail = {"version": 1, "points": []}
    if identity is not None:
        detail["code_identity"] = identity
    client.set(keys.profile_detail(name, DEVICE), json.dumps(detail))
    store.set_status(client, NS, name, ProfileState.DONE, device_type=DEVICE)


def _has_table(client: redis.Redis, name: str) -> bool:
    return store.has_table(client, name, DEVICE) and bool(client.exists(keys.profile_detail(name, DEVICE)))


def test_a_redeploy_with_another_image_or_process_drops_the_table(rclient, redis_client):
    assert _deploy(rclient, "bert", image="bert:1") == 202
    _store_table(redis_client, "bert", code_identity("bert:1"))
    store.set_status(redis_client, NS, "other", ProfileState.DONE)
    _store_table(redis_client, "other", code_identity("img"))

    assert _deploy(rclient, "bert", image="bert:1", method="put", envVars={"A": "1"}) == 202
    assert _has_table(redis_client, "bert"), "same code: the table stays"
    assert _deploy(rclient, "bert", image="bert:2", method="put") == 202
    assert not _has_table(redis_client, "bert")
    assert store.get_status(redis_client, NS, "bert") == {}, "the watcher profiles it again"
    assert _has_table(redis_client, "other")

    _store_table(redis_client, "bert", code_identity("bert:2"))
    assert _deploy(rclient, "bert", image="bert:2", method="put", envProcess="python other.py") == 202
    assert not _has_table(redis_client, "bert")


def test_a_table_without_a_recorded_identity_is_judged_against_the_previous_spec(rclient, redis_client):
    assert _deploy(rclient, "bert", image="bert:1") == 202
    _store_table(redis_client, "bert", None)
    assert _deploy(rclient, "bert", image="bert:1", method="put") == 202
    assert _has_table(redis_client, "bert")
    assert _deploy(rclient, "bert", image="bert:2", method="put") == 202
    assert not _has_table(redis_client, "bert")


def test_removing_a_function_forgets_its_profile_status(rclient, redis_client):
    assert _deploy(rclient, "bert") == 202
    store.set_status(redis_client, NS, "bert", ProfileState.PROFILING)
    assert rclient.delete("/system/functions", json={"functionName": "bert"}, headers=AUTH).status_code == 202
    assert store.get_status(redis_client, NS, "bert") == {}
    assert store.claim(redis_client, NS, "bert"), "a later deploy of the name is profiled again"


# ---- image registry --------------------------------------------------------------------------

def _handler(tmp_path: Path, text: str = "def handle(event, context):\n    return 'a'\n") -> Path:
    d = tmp_path / "fn"
    d.mkdir(exist_ok=True)
    (d / "handler.py").write_text(text)
    return d


def test_registering_an_image_then_changing_its_handler_drops_the_table(rclient, redis_client, tmp_path):
    handler = _handler(tmp_path)
    resp = rclient.put("/system/fastgshare/images", json={"image": "me/bert:latest",
                                                          "handlerDir": str(handler)}, headers=AUTH)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    rec = resp.get_json()
    assert rec["handlerDir"] == str(handler.resolve()) and rec["lang"] == "python3-torch"
    assert Path(rec["templateDir"], "index.py").is_file() and len(rec["codeDigest"]) == 64
    stored = json.loads(redis_client.hget(keys.images(), "me/bert:latest"))
    assert stored["code_digest"] == rec["codeDigest"]

    assert _deploy(rclient, "bert", image="me/bert:latest") == 202
    _store_table(redis_client, "bert", code_identity("me/bert:latest", "", stored))
    # Registered again, unchanged: the same identity, the table stays.
    rclient.put("/system/fastgshare/images", json={"image": "me/bert:latest", "handlerDir": str(handler)},
                headers=AUTH)
    assert _deploy(rclient, "bert", image="me/bert", method="put") == 202
    assert _has_table(redis_client, "bert")
    # The handler's code changed, then build + deploy: the table goes.
    _handler(tmp_path, "def handle(event, context):\n    return 'b'\n")
    rclient.put("/system/fastgshare/images", json={"image": "me/bert:latest", "handlerDir": str(handler)},
                headers=AUTH)
    assert _deploy(rclient, "bert", image="me/bert:latest", method="put") == 202
    assert not _has_table(redis_client, "bert")


@pytest.mark.parametrize(("body", "field"), [
    ({"handlerDir": "/tmp"}, "image"),
    ({"image": "a b", "handlerDir": "/tmp"}, "image"),
    ({"image": "x"}, "handlerDir"),
    ({"image": "x", "handlerDir": "relative/path"}, "handlerDir"),
    ({"image": "x", "handlerDir": "/nonexistent/fn"}, "handlerDir"),
    ({"image": "x", "handlerDir": "HANDLER", "lang": "Bad_Lang"}, "lang"),
    ({"image": "x", "handlerDir": "HANDLER", "lang": "no-such-template"}, "lang"),
    ({"image": "x", "handlerDir": "HANDLER", "templateDir": "/nonexistent"}, "templateDir"),
    ({"image": 3, "handlerDir": "HANDLER"}, "image"),
])
def test_bad_image_registrations_name_the_field(rclient, redis_client, tmp_path, body, field):
    handler = _handler(tmp_path)
    body = {k: (str(handler) if v == "HANDLER" else v) for k, v in body.items()}
    resp = rclient.put("/system/fastgshare/images", json=body, headers=AUTH)
    text = resp.get_data(as_text=True)
    assert resp.status_code == 400 and text.startswith(field), text
    assert redis_client.hlen(keys.images()) == 0


def test_image_registry_needs_auth_local_mode_and_redis(client, backend, secrets_dir, tmp_path, rclient):
    body = {"image": "x", "handlerDir": str(_handler(tmp_path))}
    assert rclient.put("/system/fastgshare/images", json=body).status_code == 401
    resp = client.put("/system/fastgshare/images", json=body, headers=AUTH)  # no Redis configured
    assert resp.status_code == 400 and "REDIS_URL" in resp.get_data(as_text=True)
    k8s = ProviderSettings(state_dir=tmp_path, secret_mount_path=secrets_dir, backend_kind="kubernetes")
    resp = create_app(backend, k8s).test_client().put("/system/fastgshare/images", json=body, headers=AUTH)
    assert resp.status_code == 400 and "faas-cli build/push" in resp.get_data(as_text=True)


def test_a_handler_folder_sent_as_an_archive(rclient, redis_client, tmp_path, settings):
    handler = _handler(tmp_path)
    digest = folder_digest(handler)
    archive = base64.b64encode(pack(handler)).decode()
    resp = rclient.put("/system/fastgshare/images", headers=AUTH,
                       json={"image": "me/up", "archive": archive, "codeDigest": digest})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    rec = resp.get_json()
    unpacked = Path(rec["handlerDir"])
    assert unpacked.is_relative_to(settings.state_dir.resolve() / "images")
    assert (unpacked / "handler.py").read_text() == (handler / "handler.py").read_text()
    assert rec["codeDigest"] == digest
    # The same upload again lands in the same place.
    again = rclient.put("/system/fastgshare/images", headers=AUTH,
                        json={"image": "me/up", "archive": archive, "codeDigest": digest})
    assert again.get_json()["handlerDir"] == rec["handlerDir"]


@pytest.mark.parametrize(("body", "field"), [
    ({"archive": "%%%"}, "archive"),
    ({"archive": base64.b64encode(b"plain text").decode()}, "archive"),
    ({"archive": "ARCHIVE_WITHOUT_HANDLER"}, "archive"),
    ({"archive": "ARCHIVE", "handlerDir": "HANDLER"}, "handlerDir"),
    ({"handlerDir": "HANDLER", "codeDigest": "0" * 64}, "codeDigest"),
    ({"handlerDir": "HANDLER", "codeDigest": "short"}, "codeDigest"),
    ({"handlerDir": "HANDLER", "templateDir": "/x", "templateArchive": "ARCHIVE"}, "templateDir"),
])
def test_bad_uploads_name_the_field(rclient, redis_client, tmp_path, body, field):
    handler = _handler(tmp_path)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "x.py").write_text("")
    subst = {"HANDLER": str(handler), "ARCHIVE": base64.b64encode(pack(handler)).decode(),
             "ARCHIVE_WITHOUT_HANDLER": base64.b64encode(pack(empty)).decode()}
    body = {"image": "x", **{k: subst.get(v, v) for k, v in body.items()}}
    resp = rclient.put("/system/fastgshare/images", json=body, headers=AUTH)
    text = resp.get_data(as_text=True)
    assert resp.status_code == 400 and text.startswith(field), text
    assert redis_client.hlen(keys.images()) == 0


def test_a_redis_that_does_not_answer_does_not_fail_a_deploy_that_happened(backend, settings):
    """The records' Redis is gone (a port nothing listens on): deploy and remove still answer 202."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from fastgshare.redis_server import free_port

    no_retry = Retry(NoBackoff(), 0)
    gone = PlatformRecords(redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=no_retry))
    c = create_app(backend, settings, records=gone).test_client()
    assert _deploy(c, "bert") == 202
    assert _deploy(c, "bert", image="other", method="put") == 202
    assert c.delete("/system/functions", json={"functionName": "bert"}, headers=AUTH).status_code == 202
