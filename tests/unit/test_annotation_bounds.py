"""Every annotation, limits and sidecar-setting parser against hostile values (issue 21): huge,
negative, NaN, unit-suffixed and non-ASCII. Each either returns a value inside its documented range
or raises ``ValidationError`` naming the field; nothing else escapes (no ``OverflowError``)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fast_manager.settings import MAX_QUEUE, MAX_TIMEOUT_S
from fast_manager.settings_check import check_function_env
from fastgshare.errors import ValidationError
from fastgshare.resources import (
    GPU_MEM,
    MAX_CPU_CORES,
    MAX_MEM_BYTES,
    MAX_SCALE_LIMIT,
    MAX_SLO_MS,
    MODEL,
    QUOTA_LIMIT,
    QUOTA_REQUEST,
    SCALE_MAX,
    SCALE_MIN,
    SLO_MS,
    SM_PARTITION,
    parse_mem_bytes,
    parse_quantity,
    parse_scale,
    parse_share,
)

NUMBERS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["9" * 400, "1" + "0" * 30, "-0", "+1", "1e308", "1e-400", "nan", "-inf", "Infinity",
                     "0x10", "1_000", " 5 ", "", ".", "1.", ".5", "٣", "５", "1\u00a0Gi", "1Gi\n"]),
)
SUFFIXES = st.sampled_from(["", "K", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m",
                            "k", "b", "B", "iB", "µ", "Mi ", "GiB", "e5", "E400"])
VALUES = st.one_of(st.builds(lambda n, u: n + u, NUMBERS, SUFFIXES), st.text(max_size=80))
SHARE_KEYS = [SM_PARTITION, QUOTA_REQUEST, QUOTA_LIMIT, GPU_MEM, SLO_MS, MODEL]


@settings(max_examples=400, deadline=None)
@given(key=st.sampled_from(SHARE_KEYS), raw=VALUES)
def test_a_share_value_is_in_range_or_refused_naming_its_key(key: str, raw: str) -> None:
    try:
        share = parse_share({key: raw})
    except ValidationError as e:
        assert e.field == key and "allowed" in str(e) and len(str(e)) < 400
        return
    assert 1 <= share.sm_pct <= 100
    assert 0 < share.quota_request_frac <= share.quota_limit_frac <= 1
    assert share.mem_bytes is None or 1 <= share.mem_bytes <= MAX_MEM_BYTES
    assert share.slo_ms is None or (math.isfinite(share.slo_ms) and 0 < share.slo_ms <= MAX_SLO_MS)
    assert share.model is None or (0 < len(share.model) <= 253 and share.model.isprintable())


@settings(max_examples=300, deadline=None)
@given(lo=VALUES, hi=VALUES)
def test_scale_bounds_are_in_range_or_refused(lo: str, hi: str) -> None:
    try:
        bounds = parse_scale({SCALE_MIN: lo, SCALE_MAX: hi})
    except ValidationError as e:
        assert e.field in (SCALE_MIN, SCALE_MAX)
        return
    assert 0 <= bounds.min_replicas <= bounds.max_replicas <= MAX_SCALE_LIMIT


@settings(max_examples=300, deadline=None)
@given(raw=VALUES, kind=st.sampled_from(["memory", "cpu"]))
def test_limits_quantities_are_bounded(raw: str, kind: str) -> None:
    try:
        value = parse_quantity(f"limits.{kind}", raw, kind)
    except ValidationError as e:
        assert e.field == f"limits.{kind}"
        return
    assert 0 < value <= (MAX_MEM_BYTES if kind == "memory" else MAX_CPU_CORES)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["FASTGSHARE_QUEUE_MAX", "FASTGSHARE_QUEUE_TIMEOUT_S",
                             "FASTGSHARE_EXEC_TIMEOUT_S", "FASTGSHARE_READY_TIMEOUT_S",
                             "FASTGSHARE_MAX_BODY_BYTES", "FASTGSHARE_BATCH", "FASTGSHARE_SLO_MS",
                             "FASTGSHARE_ARBITER_WINDOW_S", "FASTGSHARE_MEM_BYTES",
                             "FASTGSHARE_SM_PCT", "FASTGSHARE_QUOTA_LIMIT", "FASTGSHARE_ARBITER"]),
       raw=VALUES)
def test_sidecar_settings_in_env_vars_pass_the_sidecar_parser_or_are_refused(name: str, raw: str) -> None:
    try:
        check_function_env({name: raw})
    except ValidationError as e:
        assert e.field == name
        return
    from fast_manager.settings import sidecar_settings_from_env

    s = sidecar_settings_from_env({name: raw})  # what the replica's sidecar will do at start
    assert 0 <= s.queue_max <= MAX_QUEUE
    assert all(math.isfinite(t) and 0 < t <= MAX_TIMEOUT_S
               for t in (s.queue_timeout_s, s.exec_timeout_s, s.ready_timeout_s))


@pytest.mark.parametrize(("raw", "expected"), [
    ("512Mi", 512 * 2**20), ("1.5Gi", 3 * 2**29), ("16Ti", MAX_MEM_BYTES), ("1", 1), ("2GB", 2 * 10**9),
])
def test_gpu_mem_in_range(raw: str, expected: int) -> None:
    assert parse_mem_bytes(GPU_MEM, raw) == expected


@pytest.mark.parametrize("raw", [
    "9" * 400, "1000000000000000000000000000000Ti", "17Ti", "0", "0.1", "-1Gi", "nan", "inf",
    "1e400", "٣Gi", "５Mi", "1 parsec",
])
def test_gpu_mem_out_of_range_names_the_field_and_range(raw: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_mem_bytes(GPU_MEM, raw)
    assert err.value.field == GPU_MEM and "16 TiB" in str(err.value) and len(str(err.value)) < 300


@pytest.mark.parametrize(("env", "field"), [
    ({"FASTGSHARE_QUEUE_MAX": "abc"}, "FASTGSHARE_QUEUE_MAX"),
    ({"FASTGSHARE_QUEUE_MAX": "9" * 40}, "FASTGSHARE_QUEUE_MAX"),
    ({"FASTGSHARE_EXEC_TIMEOUT_S": "inf"}, "FASTGSHARE_EXEC_TIMEOUT_S"),
    ({"FASTGSHARE_QUEUE_TIMEOUT_S": "nan"}, "FASTGSHARE_QUEUE_TIMEOUT_S"),
    ({"FASTGSHARE_BATCH": "1e9"}, "FASTGSHARE_BATCH"),
    ({"FASTGSHARE_ARBITER": "maybe"}, "FASTGSHARE_ARBITER"),
    ({"FASTGSHARE_MEM_ENFORCE": "strict"}, "FASTGSHARE_MEM_ENFORCE"),
])
def test_bad_sidecar_settings_are_refused_naming_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        check_function_env(env)
    assert err.value.field == field


def test_the_function_s_own_variables_are_not_the_sidecar_s() -> None:
    check_function_env({"QUEUE_MAX": "abc", "MODEL_PATH": "/models", "FASTGSHARE_QUEUE_MAX": "8"})
