"""The resource model: gpu-share labels parsed and validated, with errors naming the key."""

import pytest

from fastgshare.errors import ValidationError
from fastgshare.resources import (
    GPU_MEM,
    QUOTA_LIMIT,
    QUOTA_REQUEST,
    SCALE_MAX,
    SCALE_MIN,
    SLO_MS,
    SM_PARTITION,
    GpuShare,
    cores_for_share,
    merged_labels,
    parse_mem_bytes,
    parse_scale,
    parse_share,
)


def test_defaults_are_a_whole_device():
    assert parse_share({}) == GpuShare(100, 1.0, 1.0, None, None, None)


def test_full_share_parsed():
    share = parse_share({SM_PARTITION: "50", QUOTA_REQUEST: "0.3", QUOTA_LIMIT: "0.6",
                         GPU_MEM: "1Gi", SLO_MS: "69", "fastgshare/model": "resnet50"})
    assert share == GpuShare(50, 0.3, 0.6, 2**30, 69.0, "resnet50")


def test_request_defaults_to_limit():
    assert parse_share({QUOTA_LIMIT: "0.4"}).quota_request_frac == 0.4


@pytest.mark.parametrize(("labels", "field"), [
    ({SM_PARTITION: "0"}, SM_PARTITION),
    ({SM_PARTITION: "101"}, SM_PARTITION),
    ({SM_PARTITION: "12.5"}, SM_PARTITION),
    ({SM_PARTITION: "lots"}, SM_PARTITION),
    ({QUOTA_LIMIT: "0"}, QUOTA_LIMIT),
    ({QUOTA_LIMIT: "1.5"}, QUOTA_LIMIT),
    ({QUOTA_REQUEST: "0.8", QUOTA_LIMIT: "0.5"}, QUOTA_REQUEST),
    ({QUOTA_REQUEST: "-0.1"}, QUOTA_REQUEST),
    ({QUOTA_REQUEST: "nan"}, QUOTA_REQUEST),
    ({GPU_MEM: "0"}, GPU_MEM),
    ({GPU_MEM: "12 parsecs"}, GPU_MEM),
    ({SLO_MS: "0"}, SLO_MS),
    ({SLO_MS: "inf"}, SLO_MS),
    ({"fastgshare/model": " "}, "fastgshare/model"),
])
def test_out_of_range_names_the_key_and_range(labels, field):
    with pytest.raises(ValidationError) as err:
        parse_share(labels)
    assert err.value.field == field
    assert field in str(err.value) and "allowed" in str(err.value)


@pytest.mark.parametrize(("raw", "expected"), [
    ("1024", 1024), ("512Mi", 512 * 2**20), ("2Gi", 2 * 2**30), ("1G", 10**9), ("1.5Ki", 1536),
])
def test_memory_suffixes(raw, expected):
    assert parse_mem_bytes(GPU_MEM, raw) == expected


def test_annotations_override_labels():
    assert merged_labels({SM_PARTITION: "10"}, {SM_PARTITION: "20"}) == {SM_PARTITION: "20"}
    assert merged_labels(None, None) == {}


def test_scale_bounds():
    assert parse_scale({}).min_replicas == 1
    assert parse_scale({SCALE_MIN: "0", SCALE_MAX: "3"}).max_replicas == 3
    with pytest.raises(ValidationError) as err:
        parse_scale({SCALE_MIN: "5", SCALE_MAX: "3"})
    assert err.value.field == SCALE_MIN
    with pytest.raises(ValidationError):
        parse_scale({SCALE_MAX: "0"})


@pytest.mark.parametrize(("sm", "cores", "expected"), [
    (100, 2, 2), (50, 2, 1), (1, 2, 1), (24, 16, 4), (60, 16, 10), (100, 1, 1),
])
def test_cores_for_share(sm, cores, expected):
    assert cores_for_share(sm, cores) == expected
