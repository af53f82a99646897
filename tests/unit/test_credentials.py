"""Which gateway and credentials the CLI uses (``fastgshare.credentials``): faas-cli's config file
format and location, and the order of the sources."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from fastgshare.credentials import (
    Credentials,
    faas_cli_config_path,
    from_faas_cli_config,
    normalize_gateway,
    resolve_target,
)

HOME, CWD = Path("/home/u"), Path("/work/here")


def token(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


# What `faas-cli login -g http://127.0.0.1:8080 -u admin` writes (its config package, yaml.v2).
FAAS_CLI_DOC = {"auths": [
    {"gateway": "http://other:8080", "auth": "basic", "token": token("bob", "x")},
    {"gateway": "http://127.0.0.1:8080", "auth": "basic", "token": token("admin", "pa:ss")},
    {"gateway": "https://sso.example.com", "auth": "oauth2", "token": "eyJhbGciOi"},
]}


@pytest.mark.parametrize(("env", "expected"), [
    ({}, HOME / ".openfaas" / "config.yml"),
    ({"OPENFAAS_CONFIG": "/etc/of"}, Path("/etc/of/config.yml")),
    ({"CI": "true"}, CWD / ".openfaas" / "config.yml"),
    ({"CI": "1", "OPENFAAS_CONFIG": "/etc/of"}, Path("/etc/of/config.yml")),
    ({"CI": "false"}, HOME / ".openfaas" / "config.yml"),
])
def test_faas_cli_config_path(env: dict[str, str], expected: Path) -> None:
    assert faas_cli_config_path(env, HOME, CWD) == expected


@pytest.mark.parametrize(("gateway", "expected"), [
    ("http://127.0.0.1:8080", Credentials("admin", "pa:ss", source="cfg")),
    ("http://127.0.0.1:8080/", Credentials("admin", "pa:ss", source="cfg")),
    ("127.0.0.1:8080", Credentials("admin", "pa:ss", source="cfg")),
    ("https://sso.example.com", Credentials(bearer="eyJhbGciOi", source="cfg (oauth2)")),
    ("http://127.0.0.1:9999", None),
])
def test_from_faas_cli_config(gateway: str, expected: Credentials | None) -> None:
    assert from_faas_cli_config(FAAS_CLI_DOC, gateway, "cfg") == expected


@pytest.mark.parametrize("doc", [None, {}, {"auths": None}, "text", {"auths": ["x"]}])
def test_from_faas_cli_config_without_entries(doc: object) -> None:
    assert from_faas_cli_config(doc, "http://127.0.0.1:8080") is None


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"no-colon").decode()])
def test_an_unreadable_token_is_named(bad: str) -> None:
    doc = {"auths": [{"gateway": "http://gw:8080", "auth": "basic", "token": bad}]}
    with pytest.raises(ValueError, match=r"auths\[0\]\.token"):
        from_faas_cli_config(doc, "http://gw:8080")


PLATFORM = ("http://127.0.0.1:8080", "admin", "from-state-dir")


@pytest.mark.parametrize(("gateway", "env", "doc", "platform", "url", "cred"), [
    # the project's own variables first
    (None, {"OPENFAAS_URL": "http://127.0.0.1:8080", "FASTGSHARE_PASSWORD": "envpw"}, FAAS_CLI_DOC,
     PLATFORM, "http://127.0.0.1:8080", ("admin", "envpw")),
    (None, {"OPENFAAS_URL": "http://gw", "FASTGSHARE_USER": "u", "FASTGSHARE_PASSWORD": "p"}, None, None,
     "http://gw", ("u", "p")),
    # then faas-cli login's token for that gateway
    ("http://127.0.0.1:8080/", {}, FAAS_CLI_DOC, PLATFORM, "http://127.0.0.1:8080", ("admin", "pa:ss")),
    (None, {"OPENFAAS_URL": "http://other:8080"}, FAAS_CLI_DOC, PLATFORM, "http://other:8080", ("bob", "x")),
    # then the running platform's, when it is that gateway
    (None, {}, None, PLATFORM, "http://127.0.0.1:8080", ("admin", "from-state-dir")),
    ("http://127.0.0.1:8080", {}, {"auths": []}, PLATFORM, "http://127.0.0.1:8080",
     ("admin", "from-state-dir")),
    ("http://elsewhere", {}, None, PLATFORM, "http://elsewhere", None),
    # --gateway beats OPENFAAS_URL
    ("http://flag", {"OPENFAAS_URL": "http://env"}, None, None, "http://flag", None),
])
def test_resolve_target_order(gateway: str | None, env: dict[str, str], doc: object,
                              platform: tuple[str, str, str] | None, url: str,
                              cred: tuple[str, str] | None) -> None:
    target = resolve_target(gateway, env, doc, platform)
    assert target.url == url
    assert target.credentials.basic == cred


def test_no_gateway_at_all_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="OPENFAAS_URL"):
        resolve_target(None, {}, FAAS_CLI_DOC, None)


def test_normalize_gateway() -> None:
    assert normalize_gateway(" http://a:1/ ") == "http://a:1"
    assert normalize_gateway("a:1") == "http://a:1"
    assert normalize_gateway("") == ""
