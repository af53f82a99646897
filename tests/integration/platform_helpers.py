"""The embedded platform with test handlers registered as images: what the end-to-end tests share."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import redis

from fast_profiler.runner import RunSettings
from fast_profiler.search import SearchSettings
from fastgshare import keys
from fastgshare.platform import Platform, PlatformInfo

HANDLERS = Path(__file__).parent / "handlers"
TEMPLATE = Path(__file__).resolve().parents[2] / "function_templates" / "python3-torch"

FAST_PROFILE = RunSettings(search=SearchSettings(min_duration_s=1.0, min_requests=60, max_duration_s=2.5,
                                                 rel_tol=0.1, max_steps=5), probe_s=0.8)
"""Short profiling steps: the end-to-end tests check the shape of a profile, not its precision."""


def register_images(redis_url: str, images: Mapping[str, Path]) -> None:
    """Map image names to handler folders, as ``fastgshare build`` does."""
    client = redis.Redis.from_url(redis_url)
    try:
        for image, handler in images.items():
            client.hset(keys.images(), image,
                        json.dumps({"handler_dir": str(handler), "template_dir": str(TEMPLATE)}))
    finally:
        client.close()


def start_platform(state_dir: Path, images: Mapping[str, Path]) -> tuple[Platform, PlatformInfo]:
    """The platform up on ``state_dir`` (any free port) with ``images`` registered."""
    p = Platform(state_dir, port=0)
    info = p.start()
    try:
        register_images(info.redis_url, images)
    except BaseException:
        p.stop()
        raise
    return p, info
