"""What the model store holds on each device, as the scheduler's placement sees it.

Pure: no filesystem, no Redis, no clock. ``model_store_fs`` scans a store directory into
``StoredModel`` records; the node agent aggregates them here per device and model identity and
publishes the result (``model_store_redis``) in the hash ``keys.device_models(device_id)``:
``<fastgshare/model identity> -> {"bytes": ..., "users": ..., "files": [...]}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from fastgshare.errors import ValidationError


@dataclass(frozen=True)
class StoredModel:
    """One weights file in a device's store and the replicas that map it."""

    file: str
    """File name in the store (``<identity>-<content hash>.safetensors``)."""
    model: str
    """The ``fastgshare/model`` identity it was written for."""
    size_bytes: int
    """Size of the file: the memory the weights take once, whatever the number of users."""
    live_users: tuple[str, ...] = ()
    """Replica ids whose process is alive and holds the file."""
    devices: tuple[str, ...] = ()
    """Devices those replicas run on (``cpu:0``, ``gpu:<uuid>``)."""


@dataclass(frozen=True)
class ModelUsage:
    """One model identity on one device."""

    bytes: int
    """Weight memory held once for all its replicas."""
    users: int
    """Live replicas sharing it."""
    files: tuple[str, ...] = field(default=())
    """The store files behind it (one per distinct weight content)."""


def usage_by_device(models: list[StoredModel],
                    default_device: str) -> dict[str, dict[str, ModelUsage]]:
    """device -> model identity -> usage. A file with no live user is not on any device."""
    out: dict[str, dict[str, ModelUsage]] = {}
    for m in models:
        if not m.live_users:
            continue
        for device in sorted(set(m.devices) or {default_device}):
            per = out.setdefault(device, {})
            old = per.get(m.model, ModelUsage(0, 0))
            users = sum(1 for d in m.devices if d == device) if m.devices else len(m.live_users)
            per[m.model] = ModelUsage(old.bytes + m.size_bytes, old.users + users,
                                      tuple(sorted((*old.files, m.file))))
    return out


def usage_to_json(u: ModelUsage) -> str:
    return json.dumps({"bytes": u.bytes, "users": u.users, "files": list(u.files)},
                      sort_keys=True)


def usage_from_json(raw: str | bytes) -> ModelUsage:
    try:
        data = json.loads(raw)
        return ModelUsage(int(data["bytes"]), int(data["users"]),
                          tuple(str(f) for f in data.get("files") or ()))
    except (ValueError, TypeError, KeyError) as e:
        raise ValidationError("device model record", 'JSON {"bytes", "users", "files"}',
                              raw) from e
