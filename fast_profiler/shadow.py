"""Profiling runs ("shadow functions") and what a profile table was measured on. Pure.

While a function ``bert`` is profiled, the profiler deploys ``bert-profile`` through the provider
API. That shadow is the platform's, not the user's: it carries the label ``PROFILE_OF_LABEL`` =
``bert`` in its stored spec, and the provider decides from that label alone (never from state
held in one of its processes) to leave it out of the faas-provider contract's answers, to
remove it with its function, and to refuse it once its function is gone.

A profile table is only as good as the code it measured: ``code_identity`` names that code (the
image, the ``envProcess``, and in local mode the handler folder and its content digest that
registering the image recorded), so that a redeploy of other code invalidates the table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

PROFILE_OF_LABEL = "fastgshare/profile-of"
"""Label of a shadow function: the name of the function it profiles (same namespace)."""
SHADOW_SUFFIX = "-profile"
NAME_MAX_CHARS = 63


def shadow_name(function: str) -> str:
    """The shadow of ``function``: ``<function>-profile``, cut to stay a 63-character DNS label."""
    return f"{function[:NAME_MAX_CHARS - len(SHADOW_SUFFIX)]}{SHADOW_SUFFIX}"


def shadow_labels(function: str) -> dict[str, str]:
    """The labels that mark a deployment as the profiling run of ``function``."""
    return {PROFILE_OF_LABEL: function}


def profile_of(labels: Mapping[str, str] | None) -> str | None:
    """The function a shadow profiles, or None for a user's function."""
    value = (labels or {}).get(PROFILE_OF_LABEL)
    return str(value) if value else None


def code_identity(image: str, env_process: str = "",
                  image_record: Mapping[str, object] | None = None) -> str:
    """A short, stable name of the code a function runs: equal identities, same code.

    ``image_record`` is local mode's registry entry of the image (handler and template folders,
    and the handler's content digest when it was registered through the provider); without one
    (Kubernetes, or an image registered before digests) the image name and ``envProcess`` are all
    that is known."""
    rec = dict(image_record or {})
    doc = {"image": image.removesuffix(":latest"), "envProcess": env_process,
           "handler_dir": str(rec.get("handler_dir") or ""),
           "template_dir": str(rec.get("template_dir") or ""),
           "code_digest": str(rec.get("code_digest") or "")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def profile_is_stale(recorded: str | None, current: str, *, old_image: str | None = None,
                     old_env_process: str | None = None, new_image: str = "",
                     new_env_process: str = "") -> bool:
    """Whether a stored table no longer describes the function's code.

    ``recorded``: the identity the table was measured with (None for a table made before tables
    recorded one); then a redeploy that changes the image or ``envProcess`` against the previous
    spec (``old_*``, None on a first deploy) is what tells."""
    if recorded:
        return recorded != current
    if old_image is None:
        return False
    return (old_image.removesuffix(":latest"), old_env_process or "") != \
        (new_image.removesuffix(":latest"), new_env_process)
