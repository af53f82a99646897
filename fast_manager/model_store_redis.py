"""Publish and read which models each device holds (``keys.device_models``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import redis

from fast_manager.model_store import ModelUsage, usage_from_json, usage_to_json
from fastgshare import keys
from fastgshare.errors import ValidationError

log = logging.getLogger("model_store")


def publish(client: redis.Redis, usage: Mapping[str, Mapping[str, ModelUsage]],
            devices: Iterable[str]) -> None:
    """Replace each device's record in one round trip; a device with no model gets no key."""
    pipe = client.pipeline(transaction=True)
    for device in sorted(set(devices) | set(usage)):
        pipe.delete(keys.device_models(device))
        models = usage.get(device) or {}
        if models:
            pipe.hset(keys.device_models(device),
                      mapping={m: usage_to_json(u) for m, u in sorted(models.items())})
    pipe.execute()


def read_device_models(client: redis.Redis, device_id: str) -> dict[str, ModelUsage]:
    """model identity -> usage on ``device_id``; malformed fields are skipped with a warning."""
    out = {}
    for raw_model, raw in client.hgetall(keys.device_models(device_id)).items():
        model = raw_model.decode() if isinstance(raw_model, bytes) else str(raw_model)
        try:
            out[model] = usage_from_json(raw)
        except ValidationError as e:
            log.warning("skipping model %s on %s: %s", model, device_id, e)
    return out
