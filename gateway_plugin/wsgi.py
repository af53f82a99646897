"""The provider as gunicorn serves it (``gunicorn gateway_plugin.wsgi:app``).

The backend is chosen by ``FASTGSHARE_BACKEND`` (``local``, the default, or ``kubernetes``) and
built here, at the edge, with the connections it needs; nothing below this module reads the
environment except ``provider_settings_from_env``.
"""

from __future__ import annotations

from flask import Flask

from gateway_plugin.app import EXTENSION_KEY, create_app
from gateway_plugin.backend import Backend
from gateway_plugin.settings import ProviderSettings, provider_settings_from_env


def make_backend(settings: ProviderSettings) -> Backend:
    """The backend ``settings.backend_kind`` names, imported lazily (only one is ever needed)."""
    if settings.backend_kind == "local":
        if not settings.redis_url:
            raise RuntimeError("REDIS_URL must be set for the local backend (`fastgshare up` sets it)")
        from gateway_plugin.local_backend import LocalBackend
        from gateway_plugin.readiness import state_store_client

        client = state_store_client(settings.redis_url)
        return LocalBackend(client, settings.state_dir)
    if settings.backend_kind == "kubernetes":
        import os

        from gateway_plugin.kubernetes_backend import (
            kubernetes_settings_from_env,
            make_kubernetes_backend,
        )

        return make_kubernetes_backend(kubernetes_settings_from_env(os.environ))
    raise RuntimeError(f"FASTGSHARE_BACKEND: ({settings.backend_kind!r}) is not one of local, kubernetes")


def create_app_from_env() -> Flask:
    settings = provider_settings_from_env()
    return create_app(make_backend(settings), settings)


def close_app(flask_app: Flask) -> None:
    """Release the backend's threads and connections and the proxy's pool (replicas keep running)."""
    parts = flask_app.extensions.get(EXTENSION_KEY, {})
    if "invoker" in parts:
        parts["invoker"].close()
    if "metrics" in parts:
        parts["metrics"].close()
    if "backend" in parts:
        parts["backend"].close()


app = create_app_from_env()
