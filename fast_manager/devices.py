"""What a node agent registers about one device, and its JSON form in Redis.

Pure: no Redis, no NVML, no clock. The node agent writes these into the hash ``keys.devices()``;
the local backend, the provider and the scheduler read them back (``node_agent.read_devices``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from fastgshare.errors import ValidationError

GPU_SPATIAL_CAPACITY = 100
"""A GPU's spatial capacity: SM share in percent (MPS active thread percentage)."""


class DeviceKind(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


class MpsState(StrEnum):
    RUNNING = "running"
    """The MPS control daemon answers on the pipe directory: SM shares are enforced."""
    NOT_RUNNING = "not-running"
    """The daemon is installed but not running: replicas share the GPU by time only."""
    NOT_INSTALLED = "not-installed"
    """``nvidia-cuda-mps-control`` is not on this node."""
    NOT_APPLICABLE = "n/a"
    """A CPU device."""


@dataclass(frozen=True)
class DeviceInfo:
    """One device of one node, with what can be shared of it."""

    device_id: str
    """``cpu:<n>`` or ``gpu:<uuid>``; the arbiter and the replicas name the device by it."""
    kind: DeviceKind
    """CPU or GPU."""
    node: str
    """Hostname of the node the device is on."""
    name: str
    """Model name (``NVIDIA H100 80GB HBM3``, or the CPU model)."""
    index: int = 0
    """NVML index on its node (0 for the CPU)."""
    mem_bytes: int = 0
    """Total device memory (CPU: the node's RAM, or its cgroup limit when lower)."""
    spatial_capacity: int = GPU_SPATIAL_CAPACITY
    """Units of spatial share: SM percent on a GPU, cores on a CPU."""
    cores: tuple[int, ...] = ()
    """CPU only: the cores replicas may be pinned to."""
    sm_count: int | None = None
    """GPU only: number of SMs, when NVML reports it."""
    mps: MpsState = MpsState.NOT_APPLICABLE
    """State of the MPS control daemon for this GPU."""
    mps_pipe_dir: str | None = None
    """GPU only: the MPS pipe directory clients must use."""
    registered_at_s: float = 0.0
    """When the node agent last wrote this record (seconds since the epoch)."""
    extra: dict[str, str] = field(default_factory=dict)
    """Free-form facts (driver version, CUDA version) for humans; nothing reads them."""

    @property
    def is_gpu(self) -> bool:
        return self.kind is DeviceKind.GPU


def cpu_device_id(index: int = 0) -> str:
    return f"cpu:{index}"


def gpu_device_id(uuid: str) -> str:
    return f"gpu:{uuid}"


def device_to_json(info: DeviceInfo) -> str:
    data = asdict(info)
    data["kind"] = info.kind.value
    data["mps"] = info.mps.value
    data["cores"] = list(info.cores)
    return json.dumps(data, sort_keys=True)


def device_from_json(raw: str | bytes) -> DeviceInfo:
    """Parse one registry record; unknown fields are ignored so newer agents stay readable."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        return DeviceInfo(
            device_id=str(data["device_id"]),
            kind=DeviceKind(data["kind"]),
            node=str(data.get("node", "")),
            name=str(data.get("name", "")),
            index=int(data.get("index", 0)),
            mem_bytes=int(data.get("mem_bytes", 0)),
            spatial_capacity=int(data.get("spatial_capacity", GPU_SPATIAL_CAPACITY)),
            cores=tuple(int(c) for c in data.get("cores") or ()),
            sm_count=None if data.get("sm_count") is None else int(data["sm_count"]),
            mps=MpsState(data.get("mps", MpsState.NOT_APPLICABLE.value)),
            mps_pipe_dir=data.get("mps_pipe_dir"),
            registered_at_s=float(data.get("registered_at_s", 0.0)),
            extra={str(k): str(v) for k, v in (data.get("extra") or {}).items()},
        )
    except (ValueError, TypeError, KeyError) as e:
        raise ValidationError("device record", "a JSON DeviceInfo object", raw) from e


def cpu_device(node: str, name: str, cores: tuple[int, ...], mem_bytes: int,
               now_s: float) -> DeviceInfo:
    """The CPU as a device: its cores are the spatial capacity."""
    cores = tuple(sorted(cores))
    return DeviceInfo(cpu_device_id(0), DeviceKind.CPU, node, name, 0, mem_bytes, len(cores),
                      cores, registered_at_s=now_s)
