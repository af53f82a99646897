"""The CLI against a running platform with nothing but its URL and the credentials a user holds.

The real platform (provider under gunicorn on loopback, Redis, node agent); the ``fastgshare`` CLI
as a separate process, started in a folder with no state directory, with a HOME whose
``.openfaas/config.yml`` is what ``faas-cli login`` writes. Functions are deployed scaled to zero:
what is tested is the provider API, not the replicas.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
import yaml

from fastgshare import keys
from fastgshare.build import register_image, upload_body
from fastgshare.handler_archive import folder_digest
from fastgshare.platform import Platform, PlatformInfo
from fastgshare.provider_client import ProviderClient

HANDLERS = Path(__file__).parent / "handlers"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformInfo]:
    p = Platform(tmp_path_factory.mktemp("platform"), port=0)
    info = p.start()
    try:
        yield info
    finally:
        p.stop()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's folder: a stack file and its handler, and no ``.fastgshare`` state directory."""
    d = tmp_path / "project"
    (d / "fn").mkdir(parents=True)
    (d / "fn" / "handler.py").write_text((HANDLERS / "linear" / "handler.py").read_text())
    stack = {"version": 1.0, "provider": {"name": "openfaas"}, "functions": {"lin": {
        "lang": "python3-torch", "handler": "./fn", "image": "me/lin:latest",
        "labels": {"com.openfaas.scale.min": "0"}}}}
    (d / "stack.yml").write_text(yaml.safe_dump(stack))
    return d


def faas_cli_login(home: Path, gateway: str, user: str, password: str) -> None:
    """What ``faas-cli login -g GATEWAY -u USER`` leaves in ``~/.openfaas/config.yml``."""
    (home / ".openfaas").mkdir(parents=True, exist_ok=True)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    (home / ".openfaas" / "config.yml").write_text(
        f"auths:\n- gateway: {gateway}\n  auth: basic\n  token: {token}\n")


def cli(project: Path, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("FASTGSHARE_", "OPENFAAS_", "REDIS_URL")) and k != "CI"}
    return subprocess.run([sys.executable, "-m", "fastgshare.cli", *args], cwd=project, text=True,
                          capture_output=True, timeout=120, env={**clean, "HOME": str(home), **env})


def functions(info: PlatformInfo) -> list[str]:
    r = requests.get(f"{info.url}/system/functions", auth=info.auth, timeout=10)
    r.raise_for_status()
    return sorted(f["name"] for f in r.json())


def test_deploy_with_gateway_and_faas_cli_login(platform: PlatformInfo, project: Path,
                                                tmp_path: Path) -> None:
    home = tmp_path / "home"
    faas_cli_login(home, platform.url, platform.user, platform.password)
    assert not (project / ".fastgshare").exists()
    done = cli(project, home, "deploy", "-f", "stack.yml", "--gateway", platform.url)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "registered image me/lin:latest" in done.stdout and "deployed lin" in done.stdout

    client = redis.Redis.from_url(platform.redis_url)
    rec = json.loads(client.hget(keys.images(), "me/lin:latest"))
    assert rec["handler_dir"] == str((project / "fn").resolve()) and len(rec["code_digest"]) == 64
    assert "lin" in functions(platform)

    # OPENFAAS_URL instead of --gateway; `status` and `remove` with the same credentials.
    status = cli(project, home, "status", OPENFAAS_URL=platform.url + "/")
    assert status.returncode == 0, status.stderr
    assert "lin" in status.stdout and "me/lin:latest" in status.stdout
    removed = cli(project, home, "remove", "lin", OPENFAAS_URL=platform.url)
    assert removed.returncode == 0, removed.stderr + removed.stdout
    assert "lin" not in functions(platform)


def test_project_variables_win_and_openfaas_config_moves_the_file(platform: PlatformInfo, project: Path,
                                                                 tmp_path: Path) -> None:
    home = tmp_path / "home"
    faas_cli_login(home, platform.url, platform.user, "wrong")
    done = cli(project, home, "build", "-f", "stack.yml", "--gateway", platform.url,
               FASTGSHARE_USER=platform.user, FASTGSHARE_PASSWORD=platform.password)
    assert done.returncode == 0, done.stderr
    elsewhere = tmp_path / "elsewhere"
    faas_cli_login(elsewhere, platform.url, platform.user, platform.password)
    done = cli(project, home, "build", "-f", "stack.yml", OPENFAAS_URL=platform.url,
               OPENFAAS_CONFIG=str(elsewhere / ".openfaas"))
    assert done.returncode == 0, done.stderr


def test_refusals_say_what_is_needed(platform: PlatformInfo, project: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # No gateway known at all.
    done = cli(project, home, "deploy", "-f", "stack.yml")
    assert done.returncode != 0 and "--gateway" in done.stderr and "OPENFAAS_URL" in done.stderr
    # A gateway but no credentials: 401, with how to log in.
    done = cli(project, home, "deploy", "-f", "stack.yml", "--gateway", platform.url)
    assert done.returncode != 0 and "401" in done.stderr and "faas-cli login" in done.stderr, done.stderr
    # Wrong credentials from faas-cli's file: the same, naming where they came from.
    faas_cli_login(home, platform.url, platform.user, "wrong")
    done = cli(project, home, "deploy", "-f", "stack.yml", "--gateway", platform.url)
    assert done.returncode != 0 and "config.yml" in done.stderr, done.stderr
    assert "lin" not in functions(platform)
    # A handler folder the provider's machine does not have is refused naming the field.
    faas_cli_login(home, platform.url, platform.user, platform.password)
    r = requests.put(f"{platform.url}/system/fastgshare/images", auth=platform.auth, timeout=10,
                     json={"image": "x", "handlerDir": "/nonexistent/fn"})
    assert r.status_code == 400 and r.text.startswith("handlerDir")


def test_a_cli_on_another_machine_uploads_the_handler(platform: PlatformInfo, project: Path,
                                                      tmp_path: Path) -> None:
    """The CLI names its folder first; a provider that does not have it (another machine: here a
    path that exists only on the "CLI's" side) takes it as an archive, and the deployed function
    runs the uploaded code."""
    handler = project / "fn"
    (handler / "handler.py").write_text((handler / "handler.py").read_text().replace(
        '"pid": os.getpid()', '"pid": os.getpid(), "uploaded": True'))
    common = {"image": "me/remote:1", "lang": "python3-torch", "codeDigest": folder_digest(handler)}
    client = ProviderClient(platform.url, platform.auth)
    rec = register_image(client, {**common, "handlerDir": "/home/someone/elsewhere/fn"},
                         upload=functools.partial(upload_body, common, handler, tmp_path / "none"))
    unpacked = Path(rec["handlerDir"])
    assert unpacked.is_relative_to(Path(platform.state_dir) / "images")
    assert rec["codeDigest"] == common["codeDigest"]

    api = requests.Session()
    api.auth = platform.auth
    assert api.post(f"{platform.url}/system/functions", timeout=30,
                    json={"service": "remote", "image": "me/remote:1"}).status_code == 202
    try:
        r = requests.post(f"{platform.url}/function/remote", data=json.dumps({"x": [1, 0, 0, 0]}),
                          timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["uploaded"] is True and r.json()["y"] == [1.0, 5.0]
    finally:
        api.delete(f"{platform.url}/system/functions", json={"functionName": "remote"}, timeout=30)
