"""The embedded platform with test handlers registered as images: what the end-to-end tests share."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import redis
import requests

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


def deploy_slo_function(info: PlatformInfo, name: str, image: str, slo_ms: float, scale_min: int,
                        scale_max: int) -> requests.Session:
    """Deploy ``name`` on a half-device share at full quota with an SLO (what the scheduler's
    end-to-end tests autoscale) and return the authenticated session used."""
    api = requests.Session()
    api.auth = info.auth
    body = {"service": name, "image": image,
            "annotations": {"fastgshare/gpu_sm_partition": "50", "fastgshare/gpu_quota_request": "1",
                            "fastgshare/gpu_quota_limit": "1", "fastgshare/slo_ms": f"{slo_ms:g}",
                            "com.openfaas.scale.min": str(scale_min),
                            "com.openfaas.scale.max": str(scale_max)}}
    resp = api.post(f"{info.url}/system/functions", json=body)
    assert resp.status_code == 202, resp.text
    return api
