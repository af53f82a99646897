"""Which gateway the CLI talks to, and with which credentials. Pure: the caller reads the files.

Users of OpenFaaS already hold both: ``OPENFAAS_URL``, and the token ``faas-cli login`` stores in
its config file (``$OPENFAAS_CONFIG/config.yml``; ``./.openfaas/`` when ``CI`` is true; else
``~/.openfaas/``), as ``auths: [{gateway, auth: basic|oauth2, token}]`` where a basic token is
base64 of ``user:password`` (faas-cli's ``config`` package). Beside them, the project's own
variables and the state directory of a ``fastgshare up`` on this machine.

Order, first found wins:
- gateway: ``--gateway``, ``OPENFAAS_URL``, the running ``up``'s URL;
- credentials: ``FASTGSHARE_PASSWORD`` (with ``FASTGSHARE_USER``, default admin), faas-cli's entry
  for that gateway, the running ``up``'s (when it is that gateway); else none.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_USER = "admin"
FAAS_CLI_FILE = "config.yml"


@dataclass(frozen=True)
class Credentials:
    """Basic auth (``user``, ``password``) or a bearer token; ``source`` says where they came from."""

    user: str = ""
    password: str = ""
    bearer: str = ""
    source: str = "none"

    @property
    def basic(self) -> tuple[str, str] | None:
        return (self.user, self.password) if self.password else None


@dataclass(frozen=True)
class Target:
    url: str
    credentials: Credentials


def normalize_gateway(url: str) -> str:
    """As faas-cli compares gateways: no trailing slash, ``http://`` when no scheme is given."""
    url = url.strip().rstrip("/")
    if url and "://" not in url:
        url = f"http://{url}"
    return url


def faas_cli_config_path(env: Mapping[str, str], home: Path, cwd: Path) -> Path:
    """Where faas-cli keeps ``config.yml`` (its ``config.ConfigDir``)."""
    if env.get("OPENFAAS_CONFIG"):
        return Path(env["OPENFAAS_CONFIG"]).expanduser() / FAAS_CLI_FILE
    if env.get("CI", "").lower() in ("true", "1"):
        return cwd / ".openfaas" / FAAS_CLI_FILE
    return home / ".openfaas" / FAAS_CLI_FILE


def from_faas_cli_config(doc: Any, gateway: str, where: str = "faas-cli config") -> Credentials | None:
    """The entry ``faas-cli login`` wrote for ``gateway`` in a parsed config file, if any.

    Raises ValueError naming the entry when it is there but unreadable."""
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, list):
        return None
    want = normalize_gateway(gateway)
    for i, entry in enumerate(auths):
        if not isinstance(entry, dict) or normalize_gateway(str(entry.get("gateway") or "")) != want:
            continue
        kind, token = str(entry.get("auth") or "basic"), str(entry.get("token") or "")
        if kind == "oauth2":
            return Credentials(bearer=token, source=f"{where} (oauth2)")
        try:
            user, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as e:
            raise ValueError(f"{where}: auths[{i}].token for {want} is not base64 of user:password") from e
        if not sep:
            raise ValueError(f"{where}: auths[{i}].token for {want} is not base64 of user:password")
        return Credentials(user, password, source=where)
    return None


def resolve_target(gateway: str | None, env: Mapping[str, str], faas_cli_doc: Any,
                   platform: tuple[str, str, str] | None, *,
                   faas_cli_where: str = "faas-cli config") -> Target:
    """The gateway and credentials to use (see the module docstring for the order).

    ``platform``: (url, user, password) of a running ``fastgshare up``, or None. Raises ValueError
    when no gateway is known."""
    url = normalize_gateway(gateway or env.get("OPENFAAS_URL") or (platform[0] if platform else ""))
    if not url:
        raise ValueError("no gateway: pass --gateway URL or set OPENFAAS_URL (with `faas-cli login`, "
                         "or FASTGSHARE_USER/FASTGSHARE_PASSWORD), or start one here with `fastgshare up`")
    if env.get("FASTGSHARE_PASSWORD"):
        return Target(url, Credentials(env.get("FASTGSHARE_USER") or DEFAULT_USER, env["FASTGSHARE_PASSWORD"],
                                       source="FASTGSHARE_USER/FASTGSHARE_PASSWORD"))
    found = from_faas_cli_config(faas_cli_doc, url, faas_cli_where)
    if found is not None:
        return Target(url, found)
    if platform and normalize_gateway(platform[0]) == url:
        return Target(url, Credentials(platform[1], platform[2], source="the running platform's state dir"))
    return Target(url, Credentials())
