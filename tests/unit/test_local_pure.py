"""Pure helpers of the local mode: stack parsing, spec storage, core picking, log lines."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fastgshare.cores import pick_cores
from fastgshare.errors import ValidationError
from fastgshare.resources import GpuShare, ScaleBounds
from fastgshare.spec_codec import spec_from_dict, spec_to_dict
from fastgshare.specs import FunctionSpec
from fastgshare.stack import parse_stack
from gateway_plugin.local_logs import parse_line


def test_stack_to_deployment_body(tmp_path: Path):
    doc = {"provider": {"name": "openfaas"}, "functions": {"resnet": {
        "lang": "python3-torch", "handler": "./functions/resnet", "image": "x/resnet:latest",
        "environment": {"A": 1}, "annotations": {"fastgshare/gpu_sm_partition": 50},
        "secrets": ["key"], "limits": {"memory": "1Gi", "bogus": "x"}}}}
    (fn,) = parse_stack(doc, tmp_path)
    assert fn.handler_dir == (tmp_path / "functions" / "resnet").resolve()
    assert fn.body == {"service": "resnet", "image": "x/resnet:latest", "envVars": {"A": "1"},
                       "annotations": {"fastgshare/gpu_sm_partition": "50"}, "secrets": ["key"],
                       "limits": {"memory": "1Gi"}}


def test_stack_without_image_is_refused(tmp_path: Path):
    with pytest.raises(ValidationError, match="functions.f.image"):
        parse_stack({"functions": {"f": {"handler": "./f"}}}, tmp_path)


def test_spec_round_trips():
    spec = FunctionSpec("f", "img", env_vars={"a": "b"}, secrets=("s",), constraints=("c",),
                        share=GpuShare(50, 0.2, 0.4, 1024, 69.0, "m"), scale=ScaleBounds(0, 3))
    assert spec_from_dict(spec_to_dict(spec)) == spec


@pytest.mark.parametrize(("cores", "sm", "load", "expected"), [
    ([0, 1], 50, {}, (0,)),
    ([0, 1], 50, {0: 1}, (1,)),
    ([0, 1], 100, {0: 3}, (0, 1)),
    ([0, 1, 2, 3], 50, {0: 1, 1: 0, 2: 2, 3: 0}, (1, 3)),
])
def test_pick_cores_least_loaded(cores, sm, load, expected):
    assert pick_cores(cores, sm, load) == expected


def test_log_line_parsing_keeps_previous_timestamp_for_bare_lines():
    prev = datetime(2026, 1, 1, tzinfo=UTC)
    ts, text = parse_line("2026-11-27T10:00:00.5Z hello world", prev)
    assert ts == datetime(2026, 11, 27, 10, 0, 0, 500000, tzinfo=UTC) and text == "hello world"
    bare = "Traceback (most recent call last):"
    assert parse_line(bare, prev) == (prev, bare)
