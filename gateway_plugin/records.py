"""What the provider keeps in the platform's Redis beside the backend's desired state.

Two things, both read and written here only on the provider's side: local mode's image registry
(``keys.images``: an image name -> the handler folder and template it stands for, with a digest of
the handler's files, ``fastgshare.handler_archive.folder_digest``), which
``PUT /system/fastgshare/images`` fills so that a CLI that holds only the gateway's URL and
credentials can build; and the profile tables that a redeploy of other code
makes stale (``fast_profiler.store.invalidate``). Nothing here is held in the process: every
provider worker reads the same Redis.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import redis

from fast_profiler import store
from fast_profiler.shadow import code_identity, profile_is_stale
from fastgshare import keys
from fastgshare.handler_archive import ArchiveError, folder_digest
from fastgshare.specs import FunctionSpec
from gateway_plugin.errors import Invalid
from gateway_plugin.readiness import state_store_client
from gateway_plugin.types import ImageRegistration

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "function_templates"
"""The templates this installation ships (``function_templates/<lang>``)."""


class PlatformRecords:
    """The image registry and profile-table invalidation over one Redis connection."""

    def __init__(self, client: redis.Redis, templates_dir: Path = TEMPLATES_DIR) -> None:
        self._redis = client
        self._templates = templates_dir

    # ---- images (local mode) ---------------------------------------------------------------

    def register_image(self, reg: ImageRegistration) -> dict[str, str]:
        """Map ``reg.image`` to its handler folder on this machine; returns the stored record."""
        handler = Path(reg.handler_dir)
        if not (handler / "handler.py").is_file():
            raise Invalid(f"handlerDir: {reg.handler_dir} has no handler.py on the provider's machine "
                          "(local mode runs functions where the provider runs: register from there)")
        template = Path(reg.template_dir) if reg.template_dir else self._templates / reg.lang
        if not (template / "index.py").is_file():
            field = "templateDir" if reg.template_dir else "lang"
            raise Invalid(f"{field}: no template at {template} (it needs an index.py)")
        try:
            digest = folder_digest(handler.resolve())
        except ArchiveError as e:
            raise Invalid(f"handlerDir: {e}") from e
        if reg.code_digest and reg.code_digest != digest:
            raise Invalid(f"codeDigest: the folder {reg.handler_dir} on the provider's machine differs "
                          f"from the one registered (sha256 {digest[:12]}..., not {reg.code_digest[:12]}...)")
        rec = {"handler_dir": str(handler.resolve()), "template_dir": str(template.resolve()),
               "lang": reg.lang, "code_digest": digest}
        self._redis.hset(keys.images(), reg.image, json.dumps(rec))
        return rec

    # ---- profile tables ----------------------------------------------------------------------

    def after_deploy(self, spec: FunctionSpec, old: FunctionSpec | None) -> list[str]:
        """A function was deployed (``old`` None) or redeployed: drop its profile tables when they
        were measured on other code. Returns the device types dropped. The deploy has happened
        already: a Redis that does not answer is logged, not raised."""
        try:
            return self._drop_stale(spec, old)
        except redis.RedisError as e:
            log.error("%s.%s deployed, but its profile tables could not be checked: %s", spec.name,
                      spec.namespace, e)
            return []

    def _drop_stale(self, spec: FunctionSpec, old: FunctionSpec | None) -> list[str]:
        current = code_identity(spec.image, spec.env_process, store.image_record(self._redis, spec.image))
        recorded = store.recorded_identities(self._redis, spec.name)
        stale = [dt for dt, ident in recorded.items()
                 if profile_is_stale(ident, current,
                                     old_image=old.image if old else None,
                                     old_env_process=old.env_process if old else None,
                                     new_image=spec.image, new_env_process=spec.env_process)]
        if not stale:
            return []
        dropped = store.invalidate(self._redis, spec.namespace, spec.name)
        log.info("%s.%s runs other code now: profile tables of %s dropped", spec.name, spec.namespace,
                 ", ".join(dropped))
        return dropped

    def forget_profile_status(self, namespace: str, name: str) -> None:
        """The function is gone: a later deploy of the name is profiled afresh (logged, not
        raised, when Redis does not answer: the removal has happened)."""
        try:
            store.forget_status(self._redis, namespace, name)
        except redis.RedisError as e:
            log.error("%s.%s removed, but its profile status could not be dropped: %s", name, namespace, e)


def platform_records_for(redis_url: str | None) -> PlatformRecords | None:
    """The records over ``redis_url``; None when the provider has no Redis configured."""
    return PlatformRecords(state_store_client(redis_url)) if redis_url else None
