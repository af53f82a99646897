"""The provider's settings, read from the environment in exactly one function.

Names follow the faas-provider conventions where one exists (``basic_auth``,
``secret_mount_path``); the rest are ``FASTGSHARE_*``. Nothing else in ``gateway_plugin`` reads
``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fastgshare.local_state import DEFAULT_STATE_DIR

"""Where local mode keeps its state when ``FASTGSHARE_STATE_DIR`` is unset."""


@dataclass(frozen=True)
class ProviderSettings:
    """How one provider process behaves. Defaults suit ``fastgshare up`` on one machine."""

    state_dir: Path = field(default_factory=lambda: DEFAULT_STATE_DIR.expanduser())
    """Root of local state: replica logs, secrets folder, embedded Redis data."""
    redis_url: str | None = None
    """The shared Redis (desired state in local mode, tokens, metrics); None: not configured."""
    backend_kind: str = "local"
    """Which backend runs replicas: ``local`` (processes here) or ``kubernetes``."""
    secret_mount_path: Path | None = None
    """Folder holding ``basic-auth-user`` / ``basic-auth-password``; None means STATE/secrets."""
    basic_auth: bool = True
    """Require basic auth on ``/system/*`` (faas-provider's ``basic_auth``)."""
    max_system_body_bytes: int = 1 << 20
    """Largest request body accepted on ``/system/*`` (413 above it); a Kubernetes secret's limit."""
    max_invoke_body_bytes: int = 64 << 20
    """Largest request body forwarded to a function (413 above it)."""
    invoke_timeout_s: float = 60.0
    """How long one invocation may take before the provider answers 504."""
    connect_timeout_s: float = 5.0
    """How long connecting to a replica may take before the provider answers 502."""
    scale_from_zero_timeout_s: float = 120.0
    """How long an invocation waits for a replica to become ready (scale from zero, cold start)."""
    upstream_pool_size: int = 128
    """Idle keep-alive connections a provider worker keeps per replica: the requests it has in
    flight to one replica at once (gthread's threads), so that a burst reuses its connections
    instead of opening and closing the excess."""
    git_sha: str = ""
    """Commit shown by ``/system/info``."""

    @property
    def secrets_dir(self) -> Path:
        """The folder basic-auth credentials are read from."""
        return self.secret_mount_path or (self.state_dir / "secrets")


def _bool(raw: str | None, default: bool) -> bool:
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in ("1", "t", "true", "yes", "on")


def provider_settings_from_env(env: Mapping[str, str] | None = None) -> ProviderSettings:
    """Every environment variable the provider reads, in one place."""
    e = os.environ if env is None else env
    d = ProviderSettings()
    state_dir = Path(e["FASTGSHARE_STATE_DIR"]).expanduser() if e.get("FASTGSHARE_STATE_DIR") \
        else d.state_dir
    mount = e.get("secret_mount_path")
    return ProviderSettings(
        state_dir=state_dir,
        redis_url=e.get("REDIS_URL") or None,
        backend_kind=e.get("FASTGSHARE_BACKEND", d.backend_kind).strip().lower() or d.backend_kind,
        secret_mount_path=Path(mount).expanduser() if mount else None,
        basic_auth=_bool(e.get("basic_auth"), d.basic_auth),
        max_system_body_bytes=int(e.get("FASTGSHARE_MAX_SYSTEM_BODY_BYTES", d.max_system_body_bytes)),
        max_invoke_body_bytes=int(e.get("FASTGSHARE_MAX_INVOKE_BODY_BYTES", d.max_invoke_body_bytes)),
        invoke_timeout_s=float(e.get("FASTGSHARE_INVOKE_TIMEOUT_S", d.invoke_timeout_s)),
        connect_timeout_s=float(e.get("FASTGSHARE_CONNECT_TIMEOUT_S", d.connect_timeout_s)),
        scale_from_zero_timeout_s=float(
            e.get("FASTGSHARE_SCALE_FROM_ZERO_TIMEOUT_S", d.scale_from_zero_timeout_s)),
        upstream_pool_size=int(e.get("FASTGSHARE_UPSTREAM_POOL_SIZE", d.upstream_pool_size)),
        git_sha=e.get("FASTGSHARE_GIT_SHA", d.git_sha),
    )
