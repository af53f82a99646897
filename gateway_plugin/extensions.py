"""FaST-GShare's own routes beside the faas-provider contract, under ``/system/fastgshare/``.

They carry what the OpenFaaS types have no field for: where each replica runs, its invoke
address (``url``, the backend's word for it, so that no client reads backend state or guesses
addresses) and with which share (for ``fastgshare status``, the scheduler and the profiler; the
profiler's shadow functions are listed here, with ``profileOf``, though the contract's routes
leave them out), the scheduler's replica configurations, and local mode's image registry
(``fastgshare build`` against a gateway URL). Same basic auth as the rest of ``/system``; same error mapping.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from flask import Response, request

from fast_profiler.shadow import profile_of
from fastgshare.errors import ValidationError
from fastgshare.handler_archive import ArchiveError, unpack
from fastgshare.resources import parse_share
from fastgshare.specs import Placement, ReplicaConfig
from gateway_plugin import types
from gateway_plugin.backend import Backend, FunctionState
from gateway_plugin.body import read_body
from gateway_plugin.errors import Invalid
from gateway_plugin.handlers import accepted, json_response
from gateway_plugin.records import PlatformRecords
from gateway_plugin.settings import ProviderSettings

MAX_CONFIGURATIONS = 64
"""Replica groups one function may have; more is surely a scheduler bug."""
MAX_BATCH = 256
"""Largest dynamic batch size a configuration may ask of its workers (``batch`` and ``batchLimit``)."""


def make_replicas_json(state: FunctionState) -> dict[str, Any]:
    return {
        "name": state.spec.name,
        "namespace": state.spec.namespace,
        "image": state.spec.image,
        "profileOf": profile_of(state.spec.labels),
        "status": state.status,
        "replicas": state.replicas,
        "availableReplicas": state.available_replicas,
        "share": state.spec.share.as_annotations(),
        "configurations": [
            {"configId": c.config_id, "replicas": c.replicas, "share": c.share.as_annotations(),
             "node": c.placement.node, "gpuUuid": c.placement.gpu_uuid, "batch": c.batch,
             "batchLimit": c.batch_limit}
            for c in state.configs
        ],
        "replicaStatus": [
            {"replica": r.replica_id, "device": r.device_id, "ready": r.ready, "url": r.url,
             "cores": list(r.cores), "smPct": r.sm_pct, "configId": r.config_id,
             "restarts": r.restarts, "pid": r.pid}
            for r in state.replica_status
        ],
    }


def as_configurations(body: Any) -> list[ReplicaConfig]:
    """``{"configurations": [{"configId", "replicas", "share": {annotation: value}, ...}]}``.

    ``batchLimit`` (optional; null or absent: none) is the batch the group's replicas run at for
    now in place of ``batch``: a change of it alone reaches the running replicas without a restart
    (the scheduler's batch lever on a burst), where a change of ``batch`` is the group's own."""
    if not isinstance(body, dict) or not isinstance(body.get("configurations"), list):
        raise ValidationError("configurations", "a JSON object with a list 'configurations'")
    raw = body["configurations"]
    if len(raw) > MAX_CONFIGURATIONS:
        raise ValidationError("configurations", f"at most {MAX_CONFIGURATIONS} entries", len(raw))
    out = []
    for i, item in enumerate(raw):
        where = f"configurations[{i}]"
        if not isinstance(item, dict):
            raise ValidationError(where, "an object with configId, replicas and share")
        config_id = item.get("configId")
        if not isinstance(config_id, str) or not types.NAME_RE.match(config_id) or len(config_id) > 20:
            raise ValidationError(f"{where}.configId", "a DNS label of at most 20 characters", config_id)
        replicas = item.get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= 1000:
            raise ValidationError(f"{where}.replicas", "an integer 0..1000", replicas)
        share = item.get("share") or {}
        if not isinstance(share, dict):
            raise ValidationError(f"{where}.share", "an object of gpu-share annotations")
        placement = Placement(str(item.get("node") or ""), str(item.get("gpuUuid") or ""))
        batch = item.get("batch", 1)
        if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_BATCH:
            raise ValidationError(f"{where}.batch", f"an integer 1..{MAX_BATCH}", batch)
        limit = item.get("batchLimit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or not 1 <= limit <= MAX_BATCH):
            raise ValidationError(f"{where}.batchLimit",
                                  f"an integer 1..{MAX_BATCH}, or null for the group's batch", limit)
        out.append(ReplicaConfig(config_id, parse_share({str(k): str(v) for k, v in share.items()}),
                                 replicas, placement, batch, limit))
    if len({c.config_id for c in out}) != len(out):
        raise ValidationError("configurations", "unique configId values")
    return out


class ExtensionHandlers:
    def __init__(self, backend: Backend, settings: ProviderSettings,
                 records: PlatformRecords | None = None) -> None:
        self._backend = backend
        self._settings = settings
        self._records = records

    def replicas(self) -> Response:
        namespace = types.validate_namespace(request.args.get("namespace"))
        return json_response([make_replicas_json(s) for s in self._backend.list(namespace)])

    def apply_configurations(self, name: str) -> Response:
        types.validate_name(name, "name")
        namespace = types.validate_namespace(request.args.get("namespace"))
        body = types.parse_json_object(
            read_body(request.environ, self._settings.max_system_body_bytes), "configurations")
        self._backend.apply_configurations(namespace, name, as_configurations(body))
        return accepted()

    def register_image(self) -> Response:
        """``PUT /system/fastgshare/images``: local mode's ``build`` (an image name -> a handler
        folder on this machine, named or sent as an archive). Answers the stored record."""
        body = types.parse_json_object(
            read_body(request.environ, self._settings.max_system_body_bytes), "image registration")
        reg = types.as_image_registration(body)
        if self._settings.backend_kind != "local":
            raise Invalid(f"image: the {self._settings.backend_kind} backend runs container images: "
                          "build and push them (faas-cli build/push); handler folders are local mode's")
        if self._records is None:
            raise Invalid("image: this provider has no Redis configured (REDIS_URL), so it keeps "
                          "no image registry")
        handler_dir = reg.handler_dir or self._unpacked(reg.archive, "archive", "handler.py")
        template_dir = reg.template_dir or self._unpacked(reg.template_archive, "templateArchive", "index.py")
        rec = self._records.register_image(replace(reg, handler_dir=handler_dir, template_dir=template_dir))
        return json_response({"image": reg.image, "handlerDir": rec["handler_dir"],
                              "templateDir": rec["template_dir"], "lang": rec["lang"],
                              "codeDigest": rec["code_digest"]})

    def _unpacked(self, archive: bytes, field: str, needs: str) -> str:
        """An uploaded folder, unpacked under ``STATE/images/<sha256 of the archive>`` (kept: the
        replicas of that image run from it); "" when none was sent."""
        if not archive:
            return ""
        dest = self._settings.state_dir / "images" / hashlib.sha256(archive).hexdigest()[:32]
        try:
            folder = unpack(archive, dest)
        except ArchiveError as e:
            raise Invalid(f"{field}: {e}") from e
        if not (folder / needs).is_file():
            raise Invalid(f"{field}: the folder it holds has no {needs} at its top")
        return str(folder)
