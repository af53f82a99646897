"""The one client of a running platform's provider API, for everything that talks to one: the CLI,
the profiler, the scheduler's loop and the benchmarks.

It speaks the faas-provider routes faas-cli uses (``/system/*``, basic auth or a bearer token) and
FaST-GShare's own (``/system/fastgshare/*``). Replica addresses come from the provider's replicas
route (each replica's ``url``, which the backend gives: a local process's port, a pod's
EndpointSlice address), so no caller reads a backend's Redis keys or builds ``127.0.0.1:PORT``;
the same calls work against the local and the Kubernetes backend. A refused request raises
``ProviderRefused`` (the status and the provider's text); an unreachable provider raises
``ProviderUnreachable`` with the cause chained. Answers of the OpenFaaS types stay the JSON
objects the contract defines (``FunctionStatus``); what callers need typed is typed here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from fastgshare.errors import FastGShareError

DEFAULT_NAMESPACE = "openfaas-fn"
"""The namespace faas-netes (and this provider) use when a request names none."""
DEFAULT_TIMEOUT_S = 30.0
"""How long one ``/system`` call may take; deploys get ``DEPLOY_TIMEOUT_S``."""
DEPLOY_TIMEOUT_S = 60.0
"""Deploy, remove and image registration (the provider validates and stores, then answers)."""
UPLOAD_TIMEOUT_S = 300.0
"""An image registration that carries the handler folder as an archive."""


class ProviderError(FastGShareError):
    """Base of the provider client's errors."""


class ProviderRefused(ProviderError):
    """The provider answered with an error status; ``status`` and ``text`` are its answer."""

    def __init__(self, what: str, status: int, text: str, hint: str = "") -> None:
        self.what = what
        self.status = status
        self.text = text.strip()
        super().__init__(f"{what}: HTTP {status}: {self.text}" + (f"\n{hint}" if hint else ""))


class ProviderUnreachable(ProviderError):
    """No answer from the provider (connection refused, timed out); the cause is chained."""


@dataclass(frozen=True)
class ReplicaAddress:
    """One replica of a function as the replicas route lists it."""

    replica_id: str
    url: str
    """Base URL of its sidecar (``/_/health``, ``/_/stats``); empty while it is not ready."""
    ready: bool
    sm_pct: int
    config_id: str = ""
    """The scheduler's configuration it belongs to; empty for the base group."""
    device_id: str = ""
    pid: int | None = None
    """Its sidecar's process id on the platform's machine (local backend only)."""


def as_replica_addresses(entry: Mapping[str, Any]) -> list[ReplicaAddress]:
    """The replicas of one ``/system/fastgshare/replicas`` entry. Pure."""
    return [ReplicaAddress(str(r.get("replica") or ""), str(r.get("url") or ""), bool(r.get("ready")),
                           int(r.get("smPct") or 100), str(r.get("configId") or ""),
                           str(r.get("device") or ""), r.get("pid"))
            for r in entry.get("replicaStatus") or []]


class ProviderClient:
    """The provider API of one platform. ``namespace`` arguments default to ``DEFAULT_NAMESPACE``
    where the route needs one and to the provider's default where it does not."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None, *, bearer: str = "",
                 auth_source: str = "", timeout_s: float = DEFAULT_TIMEOUT_S,
                 session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.auth = auth
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        if auth:
            self.session.auth = auth
        elif bearer:
            self.session.headers["Authorization"] = f"Bearer {bearer}"
        self.auth_source = auth_source or ("given" if auth or bearer else "none")
        """Where the credentials came from, named in a 401's hint."""

    # -- plumbing ---------------------------------------------------------------------------------

    def _send(self, what: str, method: str, path: str, *, ok: Sequence[int] = (200, 202),
              timeout_s: float | None = None, **kw: Any) -> requests.Response:
        try:
            resp = self.session.request(method, f"{self.url}{path}",
                                        timeout=timeout_s or self.timeout_s, **kw)
        except requests.RequestException as e:
            raise ProviderUnreachable(f"{what}: cannot reach the provider at {self.url}: {e}") from e
        if resp.status_code not in ok:
            raise self.refused(what, resp)
        return resp

    def refused(self, what: str, resp: requests.Response) -> ProviderRefused:
        """The error for a refused request; a 401 says which credentials were used."""
        hint = ""
        if resp.status_code == 401:
            hint = (f"(credentials: {self.auth_source}; log in with `faas-cli login -g {self.url}` "
                    "or set FASTGSHARE_USER/FASTGSHARE_PASSWORD)")
        return ProviderRefused(what, resp.status_code, resp.text, hint)

    @staticmethod
    def _ns(namespace: str | None) -> dict[str, str]:
        return {"namespace": namespace} if namespace else {}

    # -- the faas-provider contract -----------------------------------------------------------------

    def deploy(self, body: Mapping[str, Any]) -> int:
        """PUT, then POST on 404 (what faas-cli deploy does); the provider's status code."""
        what = f"deploy {body.get('service')}"
        resp = self._send(what, "PUT", "/system/functions", ok=(200, 202, 404), json=dict(body),
                          timeout_s=DEPLOY_TIMEOUT_S)
        if resp.status_code == 404:
            resp = self._send(what, "POST", "/system/functions", json=dict(body),
                              timeout_s=DEPLOY_TIMEOUT_S)
        return resp.status_code

    def functions(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """``GET /system/functions``: the OpenFaaS ``FunctionStatus`` objects."""
        return list(self._send("list functions", "GET", "/system/functions",
                               params=self._ns(namespace)).json())

    def status(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """``GET /system/function/<name>``; None when there is no such function."""
        resp = self._send(f"status of {name}", "GET", f"/system/function/{name}", ok=(200, 404),
                          params=self._ns(namespace))
        return None if resp.status_code == 404 else dict(resp.json())

    def scale(self, name: str, replicas: int, namespace: str | None = None) -> None:
        ns = namespace or DEFAULT_NAMESPACE
        self._send(f"scale {name}", "POST", f"/system/scale-function/{name}", params=self._ns(namespace),
                   json={"serviceName": name, "namespace": ns, "replicas": replicas})

    def remove(self, name: str, namespace: str | None = None) -> bool:
        """``DELETE /system/functions``; False when there was no such function."""
        body = {"functionName": name, **self._ns(namespace)}
        resp = self._send(f"remove {name}", "DELETE", "/system/functions", ok=(200, 202, 404),
                          json=body, timeout_s=DEPLOY_TIMEOUT_S)
        return resp.status_code != 404

    def info(self) -> dict[str, Any]:
        return dict(self._send("provider info", "GET", "/system/info").json())

    def orchestration(self) -> str:
        """The provider's backend (``/system/info``; nested under ``provider`` through a gateway)."""
        doc = self.info()
        nested = doc.get("provider") if isinstance(doc.get("provider"), dict) else {}
        return str(doc.get("orchestration") or (nested or {}).get("orchestration") or "")

    def logs(self, name: str, *, namespace: str | None = None, tail: int | None = None,
             follow: bool = False) -> Iterator[dict[str, Any]]:
        """``GET /system/logs``: one ``{name, namespace, instance, timestamp, text}`` per line,
        as they come (``follow``: until the provider closes the stream)."""
        params = {"name": name, "follow": "true" if follow else "false", **self._ns(namespace)}
        if tail is not None:
            params["tail"] = str(tail)
        try:
            resp = self.session.get(f"{self.url}/system/logs", params=params, stream=True,
                                    timeout=None if follow else self.timeout_s)
        except requests.RequestException as e:
            raise ProviderUnreachable(f"logs of {name}: cannot reach the provider at {self.url}: {e}") from e
        with resp:
            if resp.status_code != 200:
                raise self.refused(f"logs of {name}", resp)
            for line in resp.iter_lines():
                if line:
                    yield dict(json.loads(line))

    # -- the invoke path ------------------------------------------------------------------------------

    def function_url(self, name: str) -> str:
        """Where the gateway serves ``name`` (``/function/<name>``)."""
        return f"{self.url}/function/{name}"

    def invoke(self, name: str, data: bytes, *, headers: Mapping[str, str] | None = None,
               timeout_s: float = 300.0) -> requests.Response:
        """One request through the gateway; the answer whatever its status (a function's error is
        its caller's to read)."""
        try:
            return self.session.post(self.function_url(name), data=data, headers=dict(headers or {}),
                                     timeout=timeout_s)
        except requests.RequestException as e:
            raise ProviderUnreachable(f"invoke {name}: cannot reach the provider at {self.url}: {e}") from e

    # -- FaST-GShare's extensions -------------------------------------------------------------------

    def replicas(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """``GET /system/fastgshare/replicas``: per function its share, configurations and replicas
        (the profiler's shadows included, with ``profileOf``); see ``openapi.yaml``."""
        return list(self._send("list replicas", "GET", "/system/fastgshare/replicas",
                               params=self._ns(namespace)).json())

    def replicas_of(self, name: str, namespace: str | None = None) -> list[ReplicaAddress]:
        """The replicas of one function (shadows included) with their addresses; [] when it
        has none or does not exist."""
        for entry in self.replicas(namespace):
            if entry.get("name") == name:
                return as_replica_addresses(entry)
        return []

    def apply_configurations(self, name: str, configurations: Sequence[Mapping[str, Any]],
                             namespace: str | None = None) -> None:
        """``PUT /system/fastgshare/configurations/<name>``: the scheduler's replica groups."""
        self._send(f"configurations of {name}", "PUT", f"/system/fastgshare/configurations/{name}",
                   params=self._ns(namespace), json={"configurations": [dict(c) for c in configurations]})

    def register_image(self, body: Mapping[str, Any]) -> requests.Response:
        """``PUT /system/fastgshare/images`` (local mode's build); the answer whatever its status,
        since ``fastgshare build`` decides from a refusal's text whether to upload the folder."""
        timeout_s = UPLOAD_TIMEOUT_S if "archive" in body else DEPLOY_TIMEOUT_S
        try:
            return self.session.put(f"{self.url}/system/fastgshare/images", json=dict(body),
                                    timeout=timeout_s)
        except requests.RequestException as e:
            raise ProviderUnreachable(f"build {body.get('image')}: cannot reach the provider at "
                                      f"{self.url}: {e}") from e

    def close(self) -> None:
        self.session.close()
