"""DeviceInfo records and their JSON form."""

from __future__ import annotations

import pytest

from fast_manager.devices import (
    DeviceInfo,
    DeviceKind,
    MpsState,
    cpu_device,
    device_from_json,
    device_to_json,
    gpu_device_id,
)
from fast_manager.node_agent import mps_state
from fastgshare.errors import ValidationError


def test_cpu_device_has_its_cores_as_capacity() -> None:
    d = cpu_device("node-a", "EPYC", (3, 1), 8 * 2**30, now_s=100.0)
    assert d.device_id == "cpu:0" and d.kind is DeviceKind.CPU
    assert d.cores == (1, 3) and d.spatial_capacity == 2
    assert not d.is_gpu and d.mps is MpsState.NOT_APPLICABLE


@pytest.mark.parametrize("info", [
    cpu_device("n", "cpu", (0, 1), 1024, 1.5),
    DeviceInfo(gpu_device_id("GPU-abc"), DeviceKind.GPU, "n", "H100", 1, 80 * 2**30,
               sm_count=132, mps=MpsState.RUNNING, mps_pipe_dir="/tmp/nvidia-mps",
               registered_at_s=2.0, extra={"driver": "550"}),
])
def test_json_round_trip(info: DeviceInfo) -> None:
    assert device_from_json(device_to_json(info)) == info


def test_json_uses_the_field_names_readers_rely_on() -> None:
    import json

    data = json.loads(device_to_json(cpu_device("n", "cpu", (0,), 1, 0.0)))
    assert data["device_id"] == "cpu:0" and data["kind"] == "cpu" and data["cores"] == [0]


def test_unknown_fields_are_ignored() -> None:
    raw = '{"device_id": "cpu:0", "kind": "cpu", "cores": [0], "from_the_future": 1}'
    assert device_from_json(raw).cores == (0,)


@pytest.mark.parametrize("raw", ["not json", "[]", '{"kind": "cpu"}',
                                 '{"device_id": "x", "kind": "tpu"}'])
def test_bad_records_raise_validation_error(raw: str) -> None:
    with pytest.raises(ValidationError):
        device_from_json(raw)


def test_mps_state(tmp_path) -> None:
    assert mps_state(None, str(tmp_path)) is MpsState.NOT_INSTALLED
    assert mps_state("/usr/bin/nvidia-cuda-mps-control", str(tmp_path)) is MpsState.NOT_RUNNING
    (tmp_path / "control").touch()
    assert mps_state("/usr/bin/nvidia-cuda-mps-control", str(tmp_path)) is MpsState.RUNNING
