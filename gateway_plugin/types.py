"""The faas-provider wire types: JSON bodies in, our frozen records out, and back.

Pure: no Flask, no I/O, no clock. Field names, types and ``omitempty`` behaviour follow
openfaas/faas-provider ``types`` (FunctionDeployment, FunctionStatus, ScaleServiceRequest,
DeleteFunctionRequest, Secret, ProviderInfo/VersionInfo) and ``logs`` (Request, Message).
Every refusal is an ``Invalid`` whose message names the field and what is allowed.

Deliberate differences from Go's encoding, all harmless to Go decoders:
- ``replicas``, ``availableReplicas`` and ``invocationCount`` are always present (Go drops
  zeros); ``labels`` and ``annotations`` are always objects.
- ``annotations`` in a FunctionStatus carry the function's effective gpu share (defaults
  filled in, original key spelling) so ``faas-cli describe`` shows what the function runs with.
- a FunctionStatus from the provider has one extra field, ``fastgshareInvocationsStarted``
  (requests that arrived, answered or not), which the scheduler reads as demand.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastgshare.errors import ValidationError
from fastgshare.resources import ScaleBounds, merged_labels, parse_quantity, parse_scale, parse_share
from fastgshare.specs import DEFAULT_NAMESPACE, FunctionSpec
from gateway_plugin.backend import FunctionState, LogLine, SecretValue
from gateway_plugin.errors import Invalid

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
"""RFC 1123 label: function names and namespaces (as faas-netes ``validDNS``)."""
NAME_MAX_CHARS = 63
SECRET_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
"""RFC 1123 subdomain: secret names (as Kubernetes Secret object names)."""
SECRET_NAME_MAX_CHARS = 253
NAME_ALLOWED = (
    f"a lowercase RFC 1123 label: [a-z0-9]([-a-z0-9]*[a-z0-9])?, at most {NAME_MAX_CHARS} characters"
)
SECRET_NAME_ALLOWED = (
    f"a lowercase RFC 1123 subdomain (labels of [a-z0-9-] joined by '.'), at most "
    f"{SECRET_NAME_MAX_CHARS} characters"
)
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


@dataclass(frozen=True)
class LogQuery:
    """A parsed ``GET /system/logs`` query (faas-provider ``logs.Request``)."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    instance: str = ""
    since: datetime | None = None
    tail: int | None = None
    """Most recent lines to return first; None means all (faas-netes: tail <= 0 is unlimited)."""
    follow: bool = False


# ---- parsing -----------------------------------------------------------------------------------


def parse_json_object(body: bytes, what: str) -> dict[str, Any]:
    """A request body that must be one JSON object; ``what`` names it in the error."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Invalid(f"malformed JSON in {what}: {e}") from e
    if not isinstance(value, dict):
        raise Invalid(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def validate_name(value: object, field: str = "service") -> str:
    """A function name (or namespace): RFC 1123 label, at most 63 characters."""
    if not isinstance(value, str) or not value:
        raise Invalid(f"{field}: is required: {NAME_ALLOWED}")
    if len(value) > NAME_MAX_CHARS or not NAME_RE.match(value):
        raise Invalid(f"{field}: ({value!r}) is invalid: must be {NAME_ALLOWED}")
    return value


def validate_namespace(value: object, field: str = "namespace") -> str:
    """An optional namespace: empty or absent means the default, ``openfaas-fn``."""
    if value is None or value == "":
        return DEFAULT_NAMESPACE
    return validate_name(value, field)


def validate_secret_name(value: object, field: str = "name") -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"{field}: is required: {SECRET_NAME_ALLOWED}")
    if len(value) > SECRET_NAME_MAX_CHARS or not SECRET_NAME_RE.match(value):
        raise Invalid(f"{field}: ({value!r}) is invalid: must be {SECRET_NAME_ALLOWED}")
    return value


def _string(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Invalid(f"{key}: must be a string, got {_json_type(value)}")
    return value


def _string_map(obj: Mapping[str, Any], key: str) -> dict[str, str]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"{key}: must be an object of string values, got {_json_type(value)}")
    for k, v in value.items():
        if not isinstance(v, str):
            raise Invalid(f"{key}.{k}: must be a string, got {_json_type(v)}")
    return dict(value)


def _string_list(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise Invalid(f"{key}: must be an array of strings, got {_json_type(value)}")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise Invalid(f"{key}[{i}]: must be a string, got {_json_type(v)}")
    return tuple(value)


def _resources(obj: Mapping[str, Any], key: str) -> dict[str, str]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"{key}: must be an object with optional 'memory' and 'cpu' strings")
    out: dict[str, str] = {}
    for part in ("memory", "cpu"):
        raw = _string(value, part) if part in value else ""
        if raw:
            try:  # bounded to what a machine holds, exactly (no float overflow)
                parse_quantity(f"{key}.{part}", raw, part)
            except ValidationError as e:
                raise Invalid(str(e)) from e
            out[part] = raw
    return out


def _bool_field(obj: Mapping[str, Any], key: str) -> bool:
    value = obj.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise Invalid(f"{key}: must be true or false, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def as_function_spec(obj: Mapping[str, Any]) -> FunctionSpec:
    """A ``FunctionDeployment`` body -> a validated ``FunctionSpec`` (share and bounds parsed)."""
    name = validate_name(obj.get("service"), "service")
    image = _string(obj, "image").strip()
    if not image:
        raise Invalid("image: is required: a non-empty image name")
    namespace = validate_namespace(_string(obj, "namespace"))
    labels = _string_map(obj, "labels")
    annotations = _string_map(obj, "annotations")
    secrets = _string_list(obj, "secrets")
    for i, s in enumerate(secrets):
        validate_secret_name(s, f"secrets[{i}]")
    merged = merged_labels(labels, annotations)
    try:
        share = parse_share(merged)
        scale = parse_scale(merged)
    except ValidationError as e:
        raise Invalid(str(e)) from e
    return FunctionSpec(
        name=name,
        image=image,
        namespace=namespace,
        env_process=_string(obj, "envProcess"),
        env_vars=_string_map(obj, "envVars"),
        constraints=_string_list(obj, "constraints"),
        secrets=secrets,
        labels=labels,
        annotations=annotations,
        limits=_resources(obj, "limits"),
        requests=_resources(obj, "requests"),
        read_only_root_filesystem=_bool_field(obj, "readOnlyRootFilesystem"),
        share=share,
        scale=scale,
    )


def as_delete_request(obj: Mapping[str, Any]) -> str:
    """A ``DeleteFunctionRequest`` body -> the function name."""
    return validate_name(obj.get("functionName"), "functionName")


def as_scale_replicas(obj: Mapping[str, Any]) -> int:
    """A ``ScaleServiceRequest`` body -> the requested replica count (a non-negative integer).

    ``replicas`` is required: Go would read a missing field as 0 and scale the function to
    zero, which is never what a client that forgot the field meant.
    """
    allowed = "a non-negative integer"
    if "replicas" not in obj or obj["replicas"] is None:
        raise Invalid(f"replicas: is required: {allowed}")
    value = obj["replicas"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"replicas: must be {allowed}, got {_json_type(value)}")
    if value != value or value < 0 or value != int(value) or value >= 2**64:
        raise Invalid(f"replicas: ({value!r}) is invalid: must be {allowed}")
    name = obj.get("serviceName")
    if name is not None and not isinstance(name, str):
        raise Invalid(f"serviceName: must be a string, got {_json_type(name)}")
    return int(value)


def clamp_replicas(requested: int, bounds: ScaleBounds) -> int:
    """The replica count actually applied for a scale request.

    As faas-netes, only the upper bound clamps (faas-netes clamps to its global maximum; we
    clamp to the function's ``com.openfaas.scale.max``). ``com.openfaas.scale.min`` is the
    floor for deploys and autoscaling, not for explicit requests, so operators and idlers can
    scale to zero; the next invocation scales back up to ``max(1, min)``.
    """
    return max(0, min(requested, bounds.max_replicas))


def as_secret(obj: Mapping[str, Any], namespace: str) -> SecretValue:
    """A ``Secret`` body -> raw bytes. ``rawValue`` (base64, as Go's []byte) wins over ``value``."""
    name = validate_secret_name(obj.get("name"), "name")
    raw_b64 = _string(obj, "rawValue")
    if raw_b64:
        try:
            raw = base64.b64decode(raw_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise Invalid("rawValue: must be standard base64 (as Go encodes []byte)") from e
    else:
        raw = _string(obj, "value").encode()
    return SecretValue(name=name, namespace=namespace, raw=raw)


def parse_go_bool(raw: str | None) -> bool:
    """Go's ``strconv.ParseBool``, where faas-provider ignores errors: anything else is false."""
    return raw in _TRUE if raw is not None else False


def parse_rfc3339(raw: str, field: str) -> datetime:
    """An RFC 3339 timestamp with an offset (``2024-05-01T10:00:00Z``), as UTC."""
    allowed = "an RFC 3339 timestamp with a time zone, e.g. 2024-05-01T10:00:00Z"
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError as e:
        raise Invalid(f"{field}: ({raw!r}) is invalid: must be {allowed}") from e
    if value.tzinfo is None or "T" not in raw.upper():
        raise Invalid(f"{field}: ({raw!r}) is invalid: must be {allowed}")
    return value.astimezone(UTC)


def as_log_query(args: Mapping[str, str]) -> LogQuery:
    """``GET /system/logs`` query parameters -> ``LogQuery``. ``name`` is required."""
    name = validate_name(args.get("name"), "name")
    namespace = validate_namespace(args.get("namespace"))
    tail = None
    raw_tail = args.get("tail")
    if raw_tail not in (None, ""):
        try:
            tail = int(raw_tail)
        except ValueError as e:
            raise Invalid(f"tail: ({raw_tail!r}) is invalid: must be an integer") from e
        tail = tail if tail > 0 else None
    since = None
    if args.get("since"):
        since = parse_rfc3339(args["since"], "since")
    return LogQuery(name, namespace, args.get("instance") or "", since, tail,
                    parse_go_bool(args.get("follow")))


def split_function_ref(ref: str) -> tuple[str, str]:
    """``name`` or ``name.namespace`` (the gateway's form) -> (name, namespace), validated."""
    name, _, namespace = ref.partition(".")
    return validate_name(name, "function name"), validate_namespace(namespace)


# ---- making JSON ------------------------------------------------------------------------------


def rfc3339(ts: datetime) -> str:
    """As Go marshals ``time.Time``: RFC 3339 with trailing fractional zeros trimmed, ``Z`` for UTC."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    ts = ts.astimezone(UTC)
    text = ts.strftime("%Y-%m-%dT%H:%M:%S")
    if ts.microsecond:
        text += f".{ts.microsecond:06d}".rstrip("0")
    return text + "Z"


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


STARTED_FIELD = "fastgshareInvocationsStarted"
"""Extension field of a FunctionStatus: requests that arrived (``invocationCount`` counts those
answered). Go decoders ignore unknown fields; the scheduler reads its demand from it."""


def make_status_json(state: FunctionState, invocation_count: float,
                     started_count: float | None = None) -> dict[str, Any]:
    """A ``FunctionStatus`` for ``GET /system/functions`` and ``GET /system/function/{name}``."""
    spec = state.spec
    out: dict[str, Any] = {"name": spec.name, "image": spec.image, "namespace": spec.namespace}
    if spec.env_process:
        out["envProcess"] = spec.env_process
    if spec.env_vars:
        out["envVars"] = dict(spec.env_vars)
    if spec.constraints:
        out["constraints"] = list(spec.constraints)
    if spec.secrets:
        out["secrets"] = list(spec.secrets)
    out["labels"] = dict(spec.labels)
    out["annotations"] = {**spec.annotations, **spec.share.as_annotations()}
    if spec.limits:
        out["limits"] = dict(spec.limits)
    if spec.requests:
        out["requests"] = dict(spec.requests)
    if spec.read_only_root_filesystem:
        out["readOnlyRootFilesystem"] = True
    out["invocationCount"] = _number(invocation_count)
    if started_count is not None:
        out[STARTED_FIELD] = _number(started_count)
    out["replicas"] = max(0, int(state.replicas))
    out["availableReplicas"] = max(0, int(state.available_replicas))
    out["createdAt"] = rfc3339(state.created_at)
    return out


def make_secret_json(name: str, namespace: str) -> dict[str, str]:
    """A listed ``Secret``: names only, values are never listed."""
    return {"name": name, "namespace": namespace}


def make_info_json(provider: str, orchestration: str, release: str, sha: str) -> dict[str, Any]:
    """``ProviderInfo`` with its ``VersionInfo``."""
    return {"provider": provider, "version": {"sha": sha, "release": release},
            "orchestration": orchestration}


def make_log_json(line: LogLine) -> dict[str, str]:
    """A ``logs.Message``."""
    return {"name": line.name, "namespace": line.namespace, "instance": line.instance,
            "timestamp": rfc3339(line.timestamp), "text": line.text}


DEFAULT_LANG = "python3-torch"
IMAGE_MAX_CHARS = 255
PATH_MAX_CHARS = 4096


@dataclass(frozen=True)
class ImageRegistration:
    """A validated ``PUT /system/fastgshare/images`` body: local mode's stand-in for a built image.

    The handler comes as a folder on the provider's machine (``handler_dir``) or as a gzipped tar
    (``archive``) from a CLI elsewhere; the template likewise, or the installation's for ``lang``."""

    image: str
    handler_dir: str = ""
    """Absolute path, on the provider's machine, of the folder that holds ``handler.py``."""
    template_dir: str = ""
    """Absolute path of the template (has ``index.py``); empty: the installation's for ``lang``."""
    lang: str = DEFAULT_LANG
    code_digest: str = ""
    """The sender's digest of the handler folder: the provider refuses a folder that differs."""
    archive: bytes = b""
    """The handler folder as a gzipped tar (``fastgshare.handler_archive.pack``)."""
    template_archive: bytes = b""


def _absolute_path(obj: Mapping[str, Any], key: str) -> str:
    value = _string(obj, key)
    if value and (len(value) > PATH_MAX_CHARS or not value.startswith("/") or "\0" in value):
        raise Invalid(f"{key}: ({value[:200]!r}) must be an absolute path of at most {PATH_MAX_CHARS} "
                      "characters")
    return value


def _archive(obj: Mapping[str, Any], key: str) -> bytes:
    value = _string(obj, key)
    try:
        return base64.b64decode(value, validate=True) if value else b""
    except binascii.Error as e:
        raise Invalid(f"{key}: must be base64 of a gzipped tar: {e}") from e


def as_image_registration(obj: Mapping[str, Any]) -> ImageRegistration:
    """``{"image", "handlerDir" | "archive", "templateDir"? | "templateArchive"?, "lang"?,
    "codeDigest"?}`` -> an ``ImageRegistration``."""
    image = _string(obj, "image")
    if not image or len(image) > IMAGE_MAX_CHARS or any(c.isspace() or ord(c) < 32 for c in image):
        raise Invalid(f"image: ({image[:300]!r}) must be an image name of 1..{IMAGE_MAX_CHARS} "
                      "characters without whitespace")
    lang = _string(obj, "lang") or DEFAULT_LANG
    validate_name(lang, "lang")
    handler_dir, archive = _absolute_path(obj, "handlerDir"), _archive(obj, "archive")
    if bool(handler_dir) == bool(archive):
        raise Invalid("handlerDir: give exactly one of handlerDir (an absolute path on the provider's "
                      "machine) and archive (the folder as base64 of a gzipped tar)")
    template_dir, template_archive = _absolute_path(obj, "templateDir"), _archive(obj, "templateArchive")
    if template_dir and template_archive:
        raise Invalid("templateDir: give at most one of templateDir and templateArchive")
    digest = _string(obj, "codeDigest")
    if digest and not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise Invalid(f"codeDigest: ({digest[:80]!r}) must be a sha256 in lower-case hex")
    return ImageRegistration(image, handler_dir, template_dir, lang, digest, archive, template_archive)
